"""engage_consumer_lag_messages: end offset minus the next offset to process, per owned input
topic-partition, set when Prometheus scrapes (nothing per message)."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP
from prometheus_client import generate_latest

from stream.adapter.ports import FaustSource
from stream.adapter.shell import BatchShell
from stream.core.clock import PartitionTime, Progress, consumer_lag
from stream.telemetry.metrics import PipelineMetrics


class _Consumer:
    """The two consumer reads the lag needs: fetched end offsets and committed offsets."""

    def __init__(self, highwaters: dict[TP, int], committed: dict[TP, int]) -> None:
        self._highwaters = highwaters
        self._committed_offset = committed

    def highwater(self, tp: TP) -> int:
        return self._highwaters[tp]  # KeyError: no fetch answered yet


def test_lag_is_end_offset_minus_position_never_negative() -> None:
    assert consumer_lag(120, 100) == 20
    assert consumer_lag(100, 105) == 0


def test_the_shell_reports_each_owned_topic_partition_and_the_gauge_follows() -> None:
    shell = object.__new__(BatchShell)
    shell.config = SimpleNamespace(inputs={"ns.purchases": "purchases", "ns.clicks": "clicks"})
    engine0 = SimpleNamespace(time=PartitionTime(progress={"ns.purchases": Progress(40, 1)}))
    engine1 = SimpleNamespace(time=PartitionTime())
    consumer = _Consumer(
        {TP("ns.purchases", 0): 100, TP("ns.clicks", 0): 7, TP("ns.purchases", 1): 50},
        {TP("ns.clicks", 0): 7, TP("ns.purchases", 1): 45},
    )
    shell.app = SimpleNamespace(consumer=consumer)
    shell.checkpoint = SimpleNamespace(  # type: ignore[assignment]
        engines={0: engine0, 1: engine1}, source=FaustSource(shell.app, shell.config.inputs)
    )
    lags = shell.consumer_lags()
    # partition 1 clicks: no fetch answered yet, left out; a topic-partition read nothing yet:
    # its committed offset is the position
    assert lags == {("ns.purchases", 0): 60, ("ns.clicks", 0): 0, ("ns.purchases", 1): 5}
    metrics = PipelineMetrics()
    metrics.set_consumer_lags(lags)
    del shell.engines[0]  # revoked: no longer reported
    metrics.set_consumer_lags(shell.consumer_lags())
    text = generate_latest(metrics.registry).decode()
    samples = [line for line in text.splitlines() if line.startswith("engage_consumer_lag")]
    assert samples == ['engage_consumer_lag_messages{partition="1",topic="ns.purchases"} 5.0']
