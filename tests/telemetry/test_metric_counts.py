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


def test_a_batch_of_lags_lands_in_the_buckets_one_observe_each_would() -> None:
    """`observe_all` (one increment per bucket hit, per batch) against `observe` per value, on
    the pinned prometheus-client: values on, between, below and beyond the bounds."""
    from hypothesis import given
    from hypothesis import strategies as st
    from prometheus_client import CollectorRegistry, Histogram

    from stream.telemetry.metrics import LATENCY_BUCKETS, observe_all

    values = st.one_of(
        st.sampled_from(LATENCY_BUCKETS),
        st.floats(min_value=0, max_value=1e6, allow_nan=False),
        st.just(0.0),
    )

    @given(st.lists(values, max_size=50))
    def check(lags: list[float]) -> None:
        registry = CollectorRegistry()
        one = Histogram("one", "per value", buckets=LATENCY_BUCKETS, registry=registry)
        batch = Histogram("batch", "per batch", buckets=LATENCY_BUCKETS, registry=registry)
        for lag in lags:
            one.observe(lag)
        observe_all(batch, lags)
        [a], [b] = one.collect(), batch.collect()
        def counted(samples: list, prefix: str) -> list:
            return [(s.name[len(prefix):], s.labels, s.value) for s in samples
                    if s.name.endswith(("_bucket", "_count"))]  # fmt: skip

        assert counted(a.samples, "one") == counted(b.samples, "batch")
        assert registry.get_sample_value("batch_count") == len(lags)
        total = registry.get_sample_value("one_sum")
        assert registry.get_sample_value("batch_sum") == pytest.approx(total, rel=1e-9, abs=1e-9)

    check()


def test_the_worker_observes_a_batch_of_lags_in_its_end_to_end_histogram() -> None:
    m = PipelineMetrics()
    m.observe_lags([0.0002, 0.0002, 3.0])
    m.observe_lags([])
    assert _value(m, "engage_end_to_end_lag_seconds_count") == 3
    assert _value(m, "engage_end_to_end_lag_seconds_bucket", le="0.00025") == 2
    assert _value(m, "engage_end_to_end_lag_seconds_sum") == pytest.approx(3.0004)
