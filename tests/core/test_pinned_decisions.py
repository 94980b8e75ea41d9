"""The built-in rituals decide exactly what they decided before they became data.

Each case replays pinned traffic (persona traffic of three seeds, and dense mixed traffic with
every trigger, cancellation, time-zone change and consent change) with the packaged rules and
with a stress rules file, and compares the decision records byte for byte with the files
written by the code before the refactor (tests/pinned.py).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.pinned import HERE, cases, decisions, rules_of

CASES = cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_decisions_are_byte_identical_to_the_pinned_file(name: str, tmp_path: Path) -> None:
    events, rules_text = CASES[name]
    got = decisions(events, rules_of(rules_text, tmp_path))
    want = gzip.decompress((HERE / f"{name}.decisions.jsonl.gz").read_bytes()).splitlines()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g == w
