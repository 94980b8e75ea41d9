"""The Faust side of the batch engine: one call per batch of the agent's stream.

`BatchShell` turns what Faust hands over (a `take_events` batch, or a fetch of the direct drain,
`stream.adapter.drain`) into plain `Record`s and runs them through the commit protocol
(`stream.core.commit.Checkpoint`: the one place that orders a batch's state writes, sends,
flush and offset acknowledgement) with Faust's ports (`stream.adapter.ports`: the tables, the
consumer, and the sink of the processing guarantee). Records it did not process (held back past
a skipped offset) are not acknowledged, so no commit passes them. It also turns the batch's
counts into metrics, answers the health and lag questions about the engines, and starts newly
assigned partitions before their first fetch (`prepare`).

An exception in the shell itself (the engine turns any per-record failure into a dead letter)
stops the agent without acknowledging the batch and turns /healthz unhealthy, so an orchestrator
restarts the worker and the batch is read again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from faust.types import TP

from stream.adapter.collector import CycleCollector
from stream.adapter.faust_private import committed_offsets
from stream.adapter.ports import AtLeastOnceSink, FaustSource, FaustTables
from stream.adapter.sender import Sender
from stream.adapter.tables import PartitionedTable
from stream.core.clock import consumer_lag, wall_ms
from stream.core.commit import Checkpoint, Hooks
from stream.core.engine import BatchResult, EngineConfig, PartitionEngine, Projection, Record
from stream.telemetry.kpis import Kpis
from stream.telemetry.metrics import PipelineMetrics

log = logging.getLogger("engage")


class BatchShell:
    """Runs the partition engines of one worker inside its Faust agent."""

    def __init__(
        self,
        *,
        app: Any,
        config: EngineConfig,
        customers: PartitionedTable,
        control: PartitionedTable,
        topics: dict[str, Any],
        metrics: PipelineMetrics,
        kpis: Kpis,
        sender: Sender,
        projection: Projection | None = None,
        collector: CycleCollector | None = None,
        write_interval_s: float = 0.0,
    ) -> None:
        """Writes and outputs go through `sender` (`AtLeastOnceSink`); full collections of
        the cycle collector follow `collector`'s schedule (Python's own when not given);
        `write_interval_s` > 0 holds state writes back that long (`Checkpoint`'s write-behind:
        the direct drain only, which acknowledges the records a later batch returns)."""
        self.app = app
        self.collector = collector or CycleCollector(
            interval_s=0, observe=metrics.observe_full_collection
        )
        self.config = config
        self.metrics = metrics
        self.kpis = kpis
        tables = FaustTables(customers=customers, control=control)
        names = {name: str(t.get_topic_name()) for name, t in topics.items()}
        self.sink = AtLeastOnceSink(app=app, sender=sender, tables=tables, topic_names=names)
        self.checkpoint = Checkpoint(
            config,
            tables=tables,
            source=FaustSource(app, config.inputs),
            sink=self.sink,
            projection=projection,
            hooks=Hooks(count=self._count, unreadable=self._unreadable, started=self._started),
            write_interval_s=write_interval_s,
        )
        self.last_batch = time.monotonic()  # progress, for /healthz
        self.failure: BaseException | None = None
        self.batches = 0

    @property
    def engines(self) -> dict[int, PartitionEngine]:
        """The engines of the partitions this worker owns."""
        return self.checkpoint.engines

    @property
    def scan_chunk(self) -> int:
        """Stored customers read per step of a due-index rebuild."""
        return self.checkpoint.scan_chunk

    @scan_chunk.setter
    def scan_chunk(self, value: int) -> None:
        self.checkpoint.scan_chunk = value

    # --- the agent's one call -----------------------------------------------------------------

    async def handle(self, events: Sequence[Any]) -> None:
        """Process one batch of Faust stream events (`ENGAGE_DRAIN=lean|faust`); records held
        back are marked acknowledged without being counted, so no commit passes them."""
        records: list[Record] = []
        for event in events:
            m = event.message
            if m.acked:
                continue
            headers = m.headers
            if headers:
                headers = tuple(headers.items() if isinstance(headers, dict) else headers)
            records.append(
                Record(m.topic, m.partition, m.offset, int(m.timestamp * 1000), m.key, m.value,
                       headers or ())
            )  # fmt: skip
        done = await self.handle_records(records, write=True)
        if len(done) != len(records):
            processed = {(r.topic, r.partition, r.offset) for r in done}
            for event in events:
                m = event.message
                if (m.topic, m.partition, m.offset) not in processed:
                    m.acked = True

    async def handle_records(self, records: list[Record], *, write: bool = False) -> list[Record]:
        """Process one batch of records (the direct drain's call) through the commit protocol;
        returns the records to acknowledge: with write-behind, those whose state writes this
        batch queued (held back since the last write, and its own), else the ones processed.
        `write` writes whatever the write interval says (the stream's drains)."""
        started = time.perf_counter()
        done = await self.checkpoint.commit(records, wall_ms=wall_ms(), write=write)
        self.batches += 1
        self.last_batch = time.monotonic()
        if records:
            self.metrics.processing_seconds.observe((time.perf_counter() - started) / len(records))
        self._count_writes()
        self.collector.busy()
        return done

    def behind(self) -> bool:
        """Whether customers due wait for the next batch (`Checkpoint.behind`)."""
        return self.checkpoint.behind

    async def idle(self) -> list[Record]:
        """The consumer found nothing to read: changes held back are written and acknowledged
        decisions leave their outboxes. Returns the records to acknowledge."""
        done = await self.checkpoint.settle(wall_ms=wall_ms())
        self._count_writes()
        self.last_batch = time.monotonic()
        self.collector.idle()
        return done

    # --- partitions ---------------------------------------------------------------------------

    async def prepare(self, partitions: Iterable[int]) -> None:
        """Start the engines of newly assigned partitions before their first fetch (the direct
        drain calls it once a rebalance has ended), so /readyz says ready only once they can
        process at once: the due-index rebuild of a large table is part of starting, not of
        the first batch."""
        await self.checkpoint.prepare(partitions)

    def started(self, partitions: Iterable[int]) -> bool:
        """True when every one of these partitions has its engine (/readyz)."""
        return self.checkpoint.started(partitions)

    def _started(self, partitions: list[int]) -> None:
        # What exists now (Faust, the clients, the recovered tables, the due indexes) lives as
        # long as the worker: out of the cycle collector's scans (`stream.adapter.collector`).
        self.collector.freeze()

    def _unreadable(self, counts: Counter[str]) -> None:
        for reason, count in counts.items():
            self.metrics.unreadable_states.labels(reason).inc(count)
            log.error("%d unreadable customer states in the table (%s): they wake nobody",
                      count, reason)  # fmt: skip

    async def release(self, partitions: Iterable[int]) -> None:
        """Partitions about to go (revoked, or the worker stopping): their acknowledged
        decisions leave the outboxes in a last write (`Checkpoint.release`). Best effort: if
        it fails, the next owner sends them again under the same nudge_ids."""
        try:
            await self.checkpoint.release(partitions)
        except Exception as exc:
            log.warning("clearing acknowledged decisions before a hand-over failed: %s",
                        type(exc).__name__)  # fmt: skip

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: whoever gets them rebuilds their engines from the tables."""
        self.metrics.rebalances.inc()
        self.checkpoint.forget(partitions)

    def latest_clock(self) -> int:
        """The furthest partition clock of this worker (profile reads in replay mode)."""
        return max((e.time.clock for e in self.engines.values()), default=0)

    def _committed(self, p: int) -> dict[str, int | None]:
        committed = committed_offsets(self.app.consumer)
        return {t: committed.get(TP(t, p)) for t in self.config.inputs}

    def _highwaters(self, p: int) -> dict[str, int | None]:
        return self.checkpoint.source.highwaters(p)

    def consumer_lags(self) -> dict[tuple[str, int], int]:
        """Messages not processed yet per owned input topic-partition: the consumer's end
        offset as last fetched minus the next offset this worker processes (the committed
        offset before its first record). Read when metrics are scraped: nothing per message.
        A topic-partition with no fetch answered yet, or no known position, is left out."""
        out: dict[tuple[str, int], int] = {}
        for p, engine in list(self.engines.items()):
            committed = self._committed(p)
            for topic, hw in self._highwaters(p).items():
                seen = engine.time.progress.get(topic)
                position = seen.next_offset if seen is not None else None
                if position is None:
                    position = committed.get(topic)
                if hw is not None and position is not None:
                    out[(topic, p)] = consumer_lag(hw, position)
        return out

    def waiting_input(self) -> bool:
        """True when an assigned input partition has messages this worker has not read."""
        for p, engine in self.engines.items():
            for topic, hw in self._highwaters(p).items():
                seen = engine.time.progress.get(topic)
                if hw is not None and (seen is None or (seen.next_offset or 0) < hw):
                    return True
        return False

    def projected(self, customer_ids: list[str]) -> None:
        """The Redis projector confirmed these customers' writes: partitions keeping an erasure
        until its Redis deletion is confirmed drop it and write their clock record."""
        self.checkpoint.projected(customer_ids)
        self.sink.flush_later()

    # --- metrics ------------------------------------------------------------------------------

    def _count_writes(self) -> None:
        written = self.checkpoint.written
        if written:
            self.metrics.state_writes.inc(sum(len(r.states) for r in written))

    def _count(self, result: BatchResult) -> None:
        m = self.metrics
        m.add_counts(result.counts)
        if result.kpis:
            self.kpis.count_all(result.kpis)
        if result.decided:
            self.kpis.count_decisions(result.decided)
        m.observe_lags(result.lags_s)
        m.partition_clock_child(result.partition).set(result.clock / 1000)
        if self.config.clock.name == "live":
            wall = wall_ms()
            m.watermark_lag_child(result.partition).set(max(wall - result.clock, 0) / 1000)
