"""Outside the core, decision statuses are `stream.core.vocabulary.Status` members, not strings.

A status spelt as a string literal in telemetry, serving or a tool is a typo waiting to happen
(the comparison silently never matches). `held_out` is left out of the check: the lift's arms
(`treated`, `held_out`) are their own vocabulary and share that spelling. So are the webhook
forwarder's verdicts and DLQ reasons (`stream/tools/forward.py`), and the backtest summary's
count keys (`old["delivered"]`, a key lookup).
"""

from __future__ import annotations

import ast
from pathlib import Path

from stream.core.vocabulary import Status

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("stream/telemetry", "stream/serving", "stream/tools")
OWN_VOCABULARY = {"stream/tools/forward.py"}  # webhook verdicts: delivered, refused, expired
SPELLINGS = {s.value for s in Status} - {Status.HELD_OUT.value}


def _literal_statuses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    keys = {id(node.slice) for node in ast.walk(tree) if isinstance(node, ast.Subscript)}
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in SPELLINGS and id(node) not in keys
    ]


def test_no_status_is_spelt_as_a_string_outside_the_core() -> None:
    found = [
        hit
        for folder in CHECKED
        for path in sorted((ROOT / folder).rglob("*.py"))
        if str(path.relative_to(ROOT)) not in OWN_VOCABULARY
        for hit in _literal_statuses(path)
    ]
    assert found == []
