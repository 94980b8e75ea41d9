"""The `engage` command line behaves: help without side effects, consistent exit codes.

Every sub-command registered in `stream.cli.COMMANDS` (new ones included, automatically) is run
as a real subprocess with `--help` and `-h` against a broker address nobody listens on: a
command that tried to start something would fail or hang instead of printing its usage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from stream.cli import COMMANDS, main, package_version
from tests.harness import ROOT

#: Generous for a loaded 2-core machine (Faust's import alone is ~1 s); a command that started
#: a worker, a broker connection or a download would exceed it or fail first.
HELP_DEADLINE_S = 30.0


def run(*args: str, cwd: str | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """`python -m stream ARGS` with a dead broker and a throwaway devstack directory."""
    env = {
        **os.environ,
        "ENGAGE_BROKER": "kafka://127.0.0.1:1",
        "ENGAGE_REDIS_URL": "redis://127.0.0.1:1/0",
        "ENGAGE_DEVSTACK_DIR": cwd or "/nonexistent/engage-devstack",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "stream", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=HELP_DEADLINE_S,
        check=False,
    )
    return done, time.monotonic() - started


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_help_and_starts_nothing(
    command: str, flag: str, tmp_path: os.PathLike[str]
) -> None:
    workdir = str(tmp_path)
    done, elapsed = run(command, flag, cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: engage {command}"), done.stdout[:200]
    assert elapsed < HELP_DEADLINE_S
    assert "Traceback" not in done.stderr
    assert os.listdir(workdir) == [], "help must not create files"


def test_top_level_help_lists_every_command() -> None:
    done, _ = run("--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: engage")
    for name in COMMANDS:
        assert f"  {name} " in done.stdout


def test_version_comes_from_package_metadata() -> None:
    done, _ = run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"engage {package_version()}"
    assert package_version() != "0+unknown"


def test_usage_errors_exit_2() -> None:
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    for args in (["emit", "--no-such-option"], ["worker", "unexpected"], ["topics", "--bad"]):
        done, _ = run(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith(f"engage {args[0]}: error: ")  # one line, see -h
        assert done.stderr.rstrip().endswith(f"(see engage {args[0]} -h)")


def test_main_returns_int_for_argparse_exits() -> None:
    assert main(["replay", "--help"]) == 0
    assert main(["replay"]) == 2  # missing FILE argument
