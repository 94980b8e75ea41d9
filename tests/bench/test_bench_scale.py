"""The scale-out benchmark's arguments and helpers (`bench/scale.py`), without a broker.

The benchmark itself is not a test (`make bench-scale` runs it); these check what it reads from
the workers' /metrics and that a bad argument is a usage error, and that a worker exports the
process CPU counter the benchmark divides by the events processed.
"""

from __future__ import annotations

import argparse

import pytest
from prometheus_client import generate_latest

from bench.scale import (
    Scrape,
    cores_model,
    group_settled,
    main,
    metric_sum,
    owned_partitions,
    parse_counts,
)
from stream.telemetry.metrics import PipelineMetrics

EXPOSITION = """\
# HELP engage_worker_ready 1 when ready
# TYPE engage_worker_ready gauge
engage_worker_ready 1.0
engage_events_processed_total{topic="engage.clicks",type="click",outcome="folded"} 10.0
engage_events_processed_total{topic="engage.orders",type="purchase",outcome="folded"} 5.0
engage_events_processed_total_created{topic="engage.orders",type="purchase"} 1.7e9
engage_consumer_lag_messages{partition="3",topic="engage.clicks"} 0.0
engage_consumer_lag_messages{partition="3",topic="engage.orders"} 2.0
engage_consumer_lag_messages{partition="11",topic="engage.orders"} 0.0
process_cpu_seconds_total 4.25
"""


def test_a_scrape_reads_readiness_events_cpu_and_owned_partitions() -> None:
    scrape = Scrape.parse(EXPOSITION)
    assert scrape == Scrape(ready=True, processed=15.0, cpu_seconds=4.25, owned=frozenset({3, 11}))
    assert metric_sum(EXPOSITION, "engage_events_processed_total_created") == 1.7e9
    assert owned_partitions("engage_consumer_lag_messages 1.0\n") == set()


def test_a_group_is_settled_when_every_partition_has_exactly_one_ready_owner() -> None:
    def s(*owned: int, ready: bool = True) -> Scrape:
        return Scrape(ready=ready, processed=0.0, cpu_seconds=0.0, owned=frozenset(owned))

    assert group_settled([s(0, 1), s(2, 3)], 4)
    assert not group_settled([s(0, 1), s(2)], 4)  # partition 3 unowned
    assert not group_settled([s(0, 1, 2), s(2, 3)], 4)  # partition 2 twice (mid-rebalance)
    assert not group_settled([s(0, 1), s(2, 3, ready=False)], 4)


@pytest.mark.parametrize(
    ("text", "expected"), [("1,2,4", [1, 2, 4]), ("4, 1,1", [1, 4]), ("16", [16])]
)
def test_worker_counts_are_distinct_and_ascending(text: str, expected: list[int]) -> None:
    assert parse_counts(text, 16) == expected


@pytest.mark.parametrize("text", ["0,1", "17", "a,b", ""])
def test_a_bad_worker_count_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_counts(text, 16)


@pytest.mark.parametrize(
    "argv",
    [["--workers", "1,99"], ["--events", "10"], ["--skip", "latency"], ["--rebalance-base", "16"]],
)
def test_bad_arguments_are_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv, run=lambda *a: 0)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_good_arguments_reach_the_run() -> None:
    seen: list[tuple[argparse.Namespace, list[int], set[str]]] = []
    code = main(["--workers", "2,1", "--skip", "rebalance"], run=lambda *a: seen.append(a) or 0)
    assert code == 0
    assert seen[0][1] == [1, 2] and seen[0][2] == {"rebalance"}


def test_the_core_model_scales_with_cores_up_to_the_partitions() -> None:
    assert cores_model(0.0001, cores=4, partitions=16) == pytest.approx(40_000)
    assert cores_model(0.0001, cores=32, partitions=16) == pytest.approx(160_000)


def test_the_worker_exports_its_process_cpu_time() -> None:
    """What bench/scale.py and docs/scaling.md size a deployment by."""
    text = generate_latest(PipelineMetrics().registry).decode()
    assert metric_sum(text, "process_cpu_seconds_total") > 0
    assert metric_sum(text, "process_resident_memory_bytes") > 0
