"""The import contract: which layer may import which, read from the source with `ast`.

The layers, innermost first: `stream/core` (pure decisions: no I/O, no framework), then the
shells around it (`stream/telemetry`, `stream/serving`, `stream/client`, `stream/adapter`), the
shared configuration and broker modules (`stream/settings.py`, `stream/kafka_client.py`), the
tools (`stream/tools`), and the command line (`stream/cli.py`), which reaches every command
through `importlib` so `engage --help` stays cheap. `schemas/` is the published contract and
depends on no layer; `bench/` drives the product from outside and imports no test.

Every `import` statement counts, wherever it is: a lazy import inside a function ties the
layers together as much as one at the top of a module. (Imports by string through `importlib`
are not seen; the command line's dispatch table is the one place that uses them.)
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def _repository_root() -> Path:
    """The directory holding pyproject.toml above this file (wherever tests/ puts it)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    raise AssertionError("no pyproject.toml above the test file")


ROOT = _repository_root()

#: Top-level packages and modules of this repository, to tell `from stream import topic_names`
#: (a module) from `from stream import __version__` (a name in the package).
LOCAL = ("stream", "schemas", "bench", "tests")

#: The shell's frameworks and clients: the core never imports them.
FRAMEWORKS = (
    "faust",
    "mode",
    "aiokafka",
    "kafka",
    "confluent_kafka",
    "redis",
    "aiohttp",
    "prometheus_client",
    "rich",
    "rocksdict",
    "pydantic_settings",
    "uvloop",
)

#: Standard-library modules that do I/O or read the process's surroundings: the core decides
#: from its inputs alone (its one file read, the default rules, goes through pathlib).
IO_MODULES = (
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "subprocess",
    "signal",
    "threading",
    "multiprocessing",
    "concurrent",
    "urllib",
    "http",
    "os",
    "shutil",
    "tempfile",
    "sqlite3",
)

#: Every layer outside the core, for the rule that the core imports none of them.
OUTER_LAYERS = (
    "stream.adapter",
    "stream.serving",
    "stream.telemetry",
    "stream.tools",
    "stream.client",
    "stream.cli",
    "stream.settings",
    "stream.kafka_client",
)

#: Known violations being fixed on another branch right now, as (file, imported module).
#: An entry here passes its rule; an entry that no longer occurs fails the test below, so the
#: list is emptied as soon as the fix lands.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Rule:
    """Files matching `files` (globs from the repository root, minus `exempt`) may not import
    any module equal to or under one of `forbidden`."""

    name: str
    files: tuple[str, ...]
    forbidden: tuple[str, ...]
    exempt: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()  # modules under `forbidden` these files may import all the same

    def paths(self, root: Path) -> list[Path]:
        """The Python files under `root` this rule reads."""
        found = {p for pattern in self.files for p in root.glob(pattern)}
        skip = {p for pattern in self.exempt for p in root.glob(pattern)}
        return sorted(found - skip)


def _stream_except(*allowed: str) -> tuple[str, ...]:
    """Every module of the stream package but `allowed` (its root `stream` stays importable:
    it holds only the release version)."""
    layers = {
        "stream.core",
        "stream.adapter",
        "stream.serving",
        "stream.telemetry",
        "stream.tools",
        "stream.client",
        "stream.cli",
        "stream.settings",
        "stream.kafka_client",
        "stream.topic_names",
        "stream.__main__",
    }
    return tuple(sorted(layers - set(allowed)))


RULES: tuple[Rule, ...] = (
    Rule(
        "core imports no outer layer, no framework and no I/O module",
        ("stream/core/**/*.py",),
        OUTER_LAYERS + FRAMEWORKS + IO_MODULES + ("stream.__main__",),
    ),
    Rule(
        "client imports no tool, no other shell and no Faust",
        ("stream/client/**/*.py",),
        (
            "stream.tools",
            "stream.adapter",
            "stream.serving",
            "stream.telemetry",
            "stream.cli",
            "faust",
            "mode",
        ),
    ),
    Rule(
        "adapter imports no tool and no client",
        ("stream/adapter/**/*.py",),
        ("stream.tools", "stream.client"),
    ),
    Rule(
        "serving imports no tool, no adapter (but its Faust-free private-surface module), "
        "no client and no Faust",
        ("stream/serving/**/*.py",),
        ("stream.tools", "stream.adapter", "stream.client", "faust", "mode"),
        # aiokafka's one private call (a metadata refresh) lives with the other private names;
        # importing that module loads no Faust (tests/adapter/test_faust_private.py checks it).
        allowed=("stream.adapter.faust_private",),
    ),
    Rule(
        "telemetry imports no tool, no other shell and no broker or store client",
        ("stream/telemetry/**/*.py",),
        (
            "stream.tools",
            "stream.adapter",
            "stream.serving",
            "stream.client",
            "stream.cli",
            "faust",
            "mode",
            "aiokafka",
            "redis",
            "aiohttp",
        ),
    ),
    Rule(
        "settings and the Kafka client module import no layer above them",
        ("stream/settings.py", "stream/kafka_client.py"),
        (
            "stream.adapter",
            "stream.serving",
            "stream.telemetry",
            "stream.tools",
            "stream.client",
            "stream.cli",
        ),
    ),
    Rule(
        "the command line imports no command's module (it dispatches through importlib)",
        ("stream/cli.py",),
        _stream_except("stream.cli"),
    ),
    Rule(
        "Faust is imported only by the adapter and the Kafka client module",
        ("stream/**/*.py",),
        ("faust", "mode"),
        exempt=("stream/adapter/**/*.py", "stream/kafka_client.py"),
    ),
    Rule(
        "schemas import nothing from stream but the release version",
        ("schemas/**/*.py",),
        _stream_except(),
    ),
    Rule(
        "the product imports no test and no benchmark",
        ("stream/**/*.py", "schemas/**/*.py"),
        ("tests", "bench"),
    ),
    Rule("benchmarks import no test", ("bench/**/*.py",), ("tests",)),
)


def _is_local_module(dotted: str, root: Path) -> bool:
    """Whether `dotted` names a module or package of this repository (not a name inside one)."""
    if dotted.split(".")[0] not in LOCAL:
        return False
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _module_name(path: Path, root: Path) -> str:
    """The dotted name of a repository file (`stream/core/__init__.py` -> `stream.core`)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(
    source: str, module: str, *, is_package: bool, root: Path = ROOT
) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in `source`, top-level or nested, relative imports
    resolved against `module`. `from X import Y` yields `X.Y` when that is a module of this
    repository, else `X`."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield node.lineno, candidate if _is_local_module(candidate, root) else base


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(rule: Rule, root: Path = ROOT) -> list[tuple[str, int, str]]:
    """(file, line, module) for every import in the rule's files that the rule forbids."""
    found: set[tuple[str, int, str]] = set()
    for path in rule.paths(root):
        relative = path.relative_to(root).as_posix()
        source = path.read_text()
        name = _module_name(path, root)
        is_package = path.name == "__init__.py"
        for line, module in imported_modules(source, name, is_package=is_package, root=root):
            if any(_matches(module, prefix) for prefix in rule.forbidden) and not any(
                _matches(module, ok) for ok in rule.allowed
            ):
                found.add((relative, line, module))
    return sorted(found)


def _report(rule: Rule, broken: list[tuple[str, int, str]]) -> str:
    """The failure message: one line per forbidden import, file:line and the module."""
    lines = [f"  {file}:{line} imports {module}" for file, line, module in broken]
    return f"{rule.name}:\n" + "\n".join(lines)


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_layer_rule(rule: Rule) -> None:
    assert rule.paths(ROOT), f"{rule.name}: no file matches {rule.files}"
    broken = [v for v in violations(rule) if (v[0], v[2]) not in KNOWN_VIOLATIONS]
    assert not broken, _report(rule, broken)


def test_known_violations_still_occur() -> None:
    """An allow-listed import that is gone must leave the list, so the list cannot hide a
    new violation of the same kind later."""
    seen = {(file, module) for rule in RULES for file, _, module in violations(rule)}
    stale = sorted(KNOWN_VIOLATIONS - seen)
    assert not stale, f"fixed, remove from KNOWN_VIOLATIONS: {stale}"


def test_lazy_and_relative_imports_are_seen() -> None:
    source = (
        "import os\n"
        "from . import sibling\n"
        "from ..tools import devstack\n"
        "def later():\n"
        "    from stream.tools.processes import Worker\n"
        "    import faust\n"
        "class C:\n"
        "    def m(self):\n"
        "        from stream import __version__\n"
    )
    found = sorted(imported_modules(source, "stream.core.example", is_package=False))
    assert found == [
        (1, "os"),
        (2, "stream.core"),
        (3, "stream.tools.devstack"),
        (5, "stream.tools.processes"),
        (6, "faust"),
        (9, "stream"),
    ]


def test_a_lazy_forbidden_import_fails_its_rule_with_file_line_and_module(tmp_path: Path) -> None:
    (tmp_path / "stream" / "core").mkdir(parents=True)
    (tmp_path / "stream" / "tools").mkdir()
    for package in ("stream", "stream/core", "stream/tools"):
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "stream" / "tools" / "processes.py").write_text("")
    (tmp_path / "stream" / "core" / "clean.py").write_text("from stream.core import clean\n")
    (tmp_path / "stream" / "core" / "leaky.py").write_text(
        "import json\n\n\ndef helper():\n    from stream.tools import processes\n"
    )
    rule = RULES[0]
    broken = violations(rule, tmp_path)
    assert broken == [("stream/core/leaky.py", 5, "stream.tools.processes")]
    assert "stream/core/leaky.py:5 imports stream.tools.processes" in _report(rule, broken)
