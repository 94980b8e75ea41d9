"""The fast cases of the fault-injection suite (`bench/chaos.py`), against the real stack.

Small sizes of two experiments: hostile input of every category among valid events (each
dead-lettered with its exact reason and its bytes unchanged, every valid event folded, the
worker never restarts), and a `kill -9` under load followed by a restart (every profile equal
to a clean run's, every decision present). The full experiments run with `make chaos`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import Lab, experiment_a, experiment_f
from stream.tools.hostile import CATEGORIES

pytestmark = pytest.mark.integration


def _explain(outcome: object) -> str:
    return f"{outcome.failures}; figures {outcome.figures}"  # type: ignore[attr-defined]


def test_hostile_input_is_dead_lettered_with_exact_reasons(bootstrap: str, tmp_path: Path) -> None:
    lab = Lab(
        bootstrap=bootstrap,
        events=300,
        customers=40,
        partitions=4,
        hostile=len(CATEGORIES) * 3,
        valid=300,
        heavy_cap=2,
        timeout=120.0,
        workdir=tmp_path,
    )
    outcome = experiment_f(lab)
    assert outcome.figures["categories"] == len(CATEGORIES)
    assert outcome.figures["hostile dead-lettered, exact reason"] == lab.hostile, _explain(outcome)
    assert outcome.passed, _explain(outcome)


def test_kill_9_under_load_then_restart_gives_the_clean_profiles(
    bootstrap: str, tmp_path: Path
) -> None:
    lab = Lab(
        bootstrap=bootstrap,
        events=1500,
        customers=60,
        partitions=4,
        timeout=90.0,
        workdir=tmp_path,
    )
    outcome = experiment_a(lab, kills=1)
    assert outcome.figures["kills under load"] == 1, _explain(outcome)
    assert outcome.passed, _explain(outcome)
