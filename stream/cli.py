"""The `engage` console script: one entry point, one sub-command per module.

Each sub-command lives in its own module exposing ``main(argv) -> int``; this file only
dispatches, so importing it stays cheap (Faust is imported only by the commands that run it).

Every sub-command parses its arguments with `command_parser` before doing anything, so
`engage COMMAND --help` (or `-h`) prints its usage and exits 0 without touching Kafka, Redis or
the disk. Exit codes are the same everywhere: 0 success, 1 failure, 2 usage or configuration
error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from stream import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("stream.adapter.worker", "run the stream-processing worker"),
    "topics": ("stream.adapter.topics", "create the input, output and DLQ topics if missing"),
    "devstack": ("stream.tools.devstack", "install and run Kafka, Redis and Prometheus locally"),
    "emit": ("stream.tools.emitter.cli", "produce synthetic customer traffic"),
    "replay": ("stream.tools.replay", "decide rituals over a JSONL file of events, in event time"),
    "forget": ("stream.tools.forget", "erase customers (right to erasure); --wait: receipts"),
    "project": ("stream.serving.rebuild", "the Redis profile projection: `project rebuild`"),
    "demo": ("stream.tools.demo", "run the end-to-end demo"),
    "forward": ("stream.tools.forward", "POST delivered nudges to a webhook, with retries"),
    "probe": ("stream.tools.probe", "exit 0 if this machine's worker is ready (healthchecks)"),
    "report": ("stream.tools.report", "write the KPI report as one self-contained HTML file"),
    "rules": ("stream.tools.rules", "check a rules file, or diff two against history (backtest)"),
}

#: Exit codes shared by every sub-command.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

SETTINGS_EPILOG = (
    "Settings come from ENGAGE_ environment variables (ENGAGE_BROKER, ENGAGE_TOPIC_NAMESPACE, "
    "ENGAGE_REDIS_URL, ...). Exit codes: 0 success, 1 failure, 2 usage or configuration error."
)


def package_version() -> str:
    """The release version (`stream.__version__`, which the package metadata also reads), so
    `--version` agrees with pip, the CloudEvents headers and the schemas' `$id`, installed or
    run from a source tree."""
    return __version__


class CommandParser(argparse.ArgumentParser):
    """argparse with the shared error contract: a usage error is one line on stderr naming
    the command and where its help is, then exit 2 (argparse alone prints the whole usage
    block first)."""

    def error(self, message: str) -> NoReturn:
        """One line, exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} -h)\n")


def command_parser(
    name: str, description: str, *, epilog: str | None = None
) -> argparse.ArgumentParser:
    """The parser every sub-command starts from: same prog name, epilog and exit codes
    (0 on --help, 2 and one line on a usage error). `epilog` replaces the settings note for a
    command with its own."""
    return CommandParser(
        prog=f"engage {name}",
        description=description,
        epilog=epilog or SETTINGS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def one_line(message: object) -> str:
    """A message as one line: an error on stderr is one line, whatever produced it (a
    validation error listing several problems becomes `a; b`)."""
    parts = [part.strip() for part in str(message).splitlines()]
    return "; ".join(part for part in parts if part).replace(":;", ":")


def fail(command: str, message: object, code: int = EXIT_FAILURE) -> int:
    """Print `engage COMMAND: message` as one line on stderr; returns `code` for `main`."""
    print(f"engage {command}: {one_line(message)}", file=sys.stderr)
    return code


def usage() -> str:
    """The top-level help: every registered command with its one-line summary."""
    lines = [
        "usage: engage [-h] [--version] COMMAND [ARGS...]",
        "",
        "Real-time customer-engagement stream processor.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `engage COMMAND --help` for a command's options.", SETTINGS_EPILOG]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command's `main`; a SystemExit from argparse becomes the return code
    so that `main` keeps its `-> int` contract for callers that are not a shell."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(usage(), file=sys.stderr)
        return EXIT_USAGE
    if args[0] in {"-h", "--help", "help"}:
        print(usage())
        return EXIT_OK
    if args[0] in {"-V", "--version"}:
        print(f"engage {package_version()}")
        return EXIT_OK
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"engage: unknown command {name!r} (see engage --help)", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return EXIT_OK
        if isinstance(code, int):
            return code
        return fail(name, code)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a failure no command foresaw: still one line, no traceback
        if os.environ.get("ENGAGE_TRACEBACK"):
            raise
        return fail(name, f"{type(exc).__name__}: {exc} (ENGAGE_TRACEBACK=1 shows where)")


if __name__ == "__main__":
    sys.exit(main())
