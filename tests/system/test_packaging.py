"""The project as people adopt it: a license, a changelog, one version everywhere, and a wheel
that works without a source checkout.

The wheel test builds the package from a copy of the files the build reads, installs it with
`--no-deps` into an empty virtualenv, points PYTHONPATH at this interpreter's site-packages for
the dependencies only (a PYTHONPATH entry runs no `.pth` file, so the editable install of the
checkout stays out), and runs the console script from a directory outside any checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from stream import __version__

ROOT = Path(__file__).resolve().parents[2]
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


def test_the_license_is_the_one_the_package_names() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_version_is_written_once_and_the_changelog_has_it() -> None:
    assert SEMVER.match(__version__), __version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "stream.__version__"}
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## Unreleased" in changelog
    assert re.search(rf"^## {re.escape(__version__)}\b", changelog, re.M), "no changelog entry"
    assert (ROOT / "docs" / "versioning.md").exists()


def test_cloudevents_and_schemas_name_the_package_version() -> None:
    from stream.core.cloudevents import DATASCHEMA

    for kind in ("nudge", "decision"):
        assert DATASCHEMA[kind] == f"urn:engage:schema:{kind}:{__version__}"
        schema = json.loads((ROOT / "schemas" / "json" / f"{kind}.schema.json").read_text())
        assert schema["$id"] == DATASCHEMA[kind]


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("stream", "schemas"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    cmd = [*pip, "wheel", str(src), "--no-deps", "-q", "-w", str(tmp / "dist")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("engage-*.whl")
    return wheel


@pytest.mark.timeout(300)
def test_an_installed_wheel_runs_without_a_source_checkout(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    assert wheel.name == f"engage-{__version__}-py3-none-any.whl"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python",
               str(python), "install", "-q", "--no-deps", str(wheel)]  # fmt: skip
    done = subprocess.run(install, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")},
        "PYTHONPATH": sysconfig.get_paths()["purelib"],
        "PYTHONSAFEPATH": "1",
    }
    engage = str(venv / "bin" / "engage")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60
        )

    done = run(engage, "--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"engage {__version__}"), done.stderr
    for command in ("worker", "replay"):
        done = run(engage, command, "--help")
        assert done.returncode == 0, done.stderr
        assert f"usage: engage {command}" in done.stdout
    probe = """
import json, pathlib, stream, schemas
from stream.core.rules import DEFAULT_RULES_FILE, load_rules
from schemas.export import JSON_DIR
from stream.core.cloudevents import DATASCHEMA
rules = load_rules()
nudge = json.loads((JSON_DIR / "nudge.schema.json").read_text())
print(json.dumps({
    "stream": stream.__file__, "schemas": schemas.__file__,
    "rules_file": str(DEFAULT_RULES_FILE), "rules_version": rules.version,
    "id": nudge["$id"], "dataschema": DATASCHEMA["nudge"],
    "schemas_count": len(list(JSON_DIR.glob("*.schema.json"))),
}))
"""
    done = run(str(python), "-c", probe)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    site = str(venv.resolve())
    for key in ("stream", "schemas", "rules_file"):
        assert str(Path(got[key]).resolve()).startswith(site), (key, got[key])
    assert got["rules_version"]
    assert got["id"] == got["dataschema"] == f"urn:engage:schema:nudge:{__version__}"
    assert got["schemas_count"] == len(list((ROOT / "schemas" / "json").glob("*.schema.json")))
    dist_info = next(
        p for p in Path(got["stream"]).parents[1].glob(f"engage-{__version__}.dist-info")
    )
    assert any("Apache License" in p.read_text() for p in dist_info.rglob("LICENSE*"))
