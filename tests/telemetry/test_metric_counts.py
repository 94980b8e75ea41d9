"""The engine's counts reach their Prometheus counters through one table (no broker needed).

The engine reports what a batch did as plain counts keyed by a name and labels
(`("processed", topic, type, outcome)`); `PipelineMetrics.add_counts` adds them to the
counters through `stream.telemetry.metrics.COUNTERS`. These tests pin that every name the engine
counts has a counter, that each lands on the right series, and what happens to a name without
one (logged once, dropped, the others still counted).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from stream.telemetry.metrics import COUNTERS, PipelineMetrics

CORE = Path(__file__).resolve().parents[2] / "stream" / "core"


def _engine_count_names() -> set[str]:
    """Every count name the core writes (`counts[("name", ...)] += n`), read from its source."""
    pattern = re.compile(r"counts\[\(\s*\"(\w+)\"")
    return {name for path in CORE.glob("*.py") for name in pattern.findall(path.read_text())}


def _value(m: PipelineMetrics, name: str, **labels: str) -> float:
    value = m.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_every_count_the_engine_writes_has_a_counter_and_none_is_left_over() -> None:
    names = _engine_count_names()
    assert "processed" in names and "decision" in names  # the scan reads the engine
    assert names == set(COUNTERS)


def test_each_count_lands_on_its_own_series() -> None:
    m = PipelineMetrics()
    ritual = "first_purchase_thanks"
    m.add_counts(
        {
            ("consumed", "ns.clicks"): 3,
            ("processed", "ns.clicks", "click", "folded"): 2,
            ("dlq", "malformed_json"): 1,
            ("duplicate", "click"): 4,
            ("decision", ritual, "delivered", "v1"): 5,
            ("outcome", ritual, "treated", "returned", "v1"): 6,
            ("erasure", "true"): 7,
            ("erasure", "false"): 8,
            ("redelivered", "ns.clicks"): 9,
            ("resent",): 10,
            ("late",): 11,
            ("wake_errors",): 12,
        }
    )
    assert _value(m, "engage_events_consumed_total", topic="ns.clicks") == 3
    assert (
        _value(
            m, "engage_events_processed_total", topic="ns.clicks", type="click", outcome="folded"
        )
        == 2
    )
    assert _value(m, "engage_dlq_messages_total", reason="malformed_json") == 1
    assert _value(m, "engage_duplicate_events_total", type="click") == 4
    assert (
        _value(m, "engage_ritual_decisions_total", ritual=ritual, status="delivered",
               rules_version="v1") == 5
    )  # fmt: skip
    assert (
        _value(m, "engage_ritual_outcomes_total", ritual=ritual, arm="treated",
               outcome="returned", rules_version="v1") == 6
    )  # fmt: skip
    assert _value(m, "engage_erasures_total", found="true") == 7
    assert _value(m, "engage_erasures_total", found="false") == 8
    assert _value(m, "engage_redelivered_events_total") == 9
    assert _value(m, "engage_decisions_resent_total") == 10
    assert _value(m, "engage_late_events_total") == 11
    assert _value(m, "engage_wake_errors_total") == 12
    m.add_counts({("late",): 1})
    assert _value(m, "engage_late_events_total") == 12  # added, not set


def test_a_count_without_a_counter_is_logged_once_and_the_others_still_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = PipelineMetrics()
    with caplog.at_level(logging.WARNING, logger="engage"):
        m.add_counts({("no_such_count", "x"): 1, ("late",): 2})
        m.add_counts({("no_such_count", "y"): 1})
    assert _value(m, "engage_late_events_total") == 2
    warnings = [r for r in caplog.records if "no_such_count" in r.getMessage()]
    assert len(warnings) == 1
