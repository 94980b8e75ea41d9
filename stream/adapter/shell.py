"""The Faust side of the batch engine: one call per batch of the agent's stream.

The agent takes batches (`stream.take_events`), and `BatchShell.handle` splits each into its
partitions' slices, hands every slice to that partition's `PartitionEngine`, then:

1. writes each changed customer once, to the changelog partition of the input partition it came
   from, and the partition's clock record;
2. queues every decision, nudge and dead letter; a decision's acknowledgement (the send
   callback) clears it from the customer's outbox with one more write. With `at_least_once`
   the writes' changelog records and the outputs go, in order, straight to the producer
   (`stream.adapter.sender`) before the batch returns; with `exactly_once` through Faust's
   `send_soon` (its transactions);
3. applies the batch's metric counts, once per label set;
4. returns, and only then does `take_events` acknowledge the batch's offsets, so the offsets
   committed never pass a write or send that was not queued (at-least-once). Faust flushes the
   producer before every commit.

Highwater marks, the wall clock and due timers are read once per partition per batch. A newly
assigned partition first rebuilds its due index from the recovered table and re-sends its
unacknowledged decisions: with the direct drain before the worker says ready (`prepare`),
otherwise before the partition's first batch. An exception in the shell itself (the engine
turns any per-record failure into a dead letter) stops the agent without acknowledging the
batch and turns /healthz unhealthy, so an orchestrator restarts the worker and the batch is
read again.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

from faust.types import TP

from stream.adapter.sender import Sender
from stream.adapter.tables import PartitionedTable, PartitionStore
from stream.core.clock import PartitionTime, Progress, Replay, consumer_lag, wall_ms
from stream.core.engine import (
    REPLAY_STATUS,
    BatchResult,
    EngineConfig,
    Output,
    PartitionEngine,
    Projection,
    Record,
    by_partition,
    time_key,
)
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
        projection: Projection | None = None,
        sender: Sender | None = None,
    ) -> None:
        self.app = app
        self.sender = sender  # None: Faust's send_soon path (exactly_once, its transactions)
        self.config = config
        self.customers = customers
        self.control = control
        self.topics = topics
        self.metrics = metrics
        self.kpis = kpis
        self.projection = projection
        self.engines: dict[int, PartitionEngine] = {}
        self.inflight: Counter[tuple[int, bytes, str]] = Counter()
        self.expected: dict[TP, int] = {}  # per input topic-partition: the next offset to fold
        self.last_batch = time.monotonic()  # progress, for /healthz
        self.failure: BaseException | None = None
        self.batches = 0
        self.scan_chunk = 2000  # stored customers read per step of a due-index rebuild
        self._starting: set[int] = set()  # partitions whose engines `_start` is building
        names = {name: str(t.get_topic_name()) for name, t in topics.items()} if sender else {}
        self._topic_names: dict[str, str] = names

    # --- the agent's one call -----------------------------------------------------------------

    async def handle(self, events: Sequence[Any]) -> None:
        """Process one batch of Faust stream events (`ENGAGE_DRAIN=lean|faust`); records held
        back (see `_holes`) are marked acknowledged without being counted, so no commit
        passes them."""
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
        done = await self.handle_records(records)
        if len(done) != len(records):
            processed = {(r.topic, r.partition, r.offset) for r in done}
            for event in events:
                m = event.message
                if (m.topic, m.partition, m.offset) not in processed:
                    m.acked = True

    async def handle_records(self, records: list[Record]) -> list[Record]:
        """Process one batch of records (the direct drain's call); returns the records
        processed, the ones to acknowledge. See the module docstring for the order."""
        started = time.perf_counter()
        done, holes = self._holes(records)
        slices: dict[int, list[Record]] = {}
        for record in done:
            part = slices.get(record.partition)
            if part is None:
                part = slices[record.partition] = []
            part.append(record)
        new = [p for p in slices if p not in self.engines]
        replay_done: list[Output] = []
        if new:
            replay_done.extend(await self._start(new))
        now_ms = wall_ms()
        uses_highwaters = self.config.clock.uses_highwaters
        for p, part in slices.items():
            engine = self.engines[p]
            highwaters = self._highwaters(p) if uses_highwaters else None
            result = engine.process(part, highwaters=highwaters, wall_ms=now_ms)
            replay_done.extend(self._apply(result))
        await self._send()
        await self._say(replay_done)
        for tp, offset in holes.items():
            log.warning("the consumer skipped offsets of %s[%s] from %s: reading them again",
                        tp.topic, tp.partition, offset)  # fmt: skip
            await self.app.consumer.seek(tp, offset)
        self.batches += 1
        self.last_batch = time.monotonic()
        if done:
            self.metrics.processing_seconds.observe((time.perf_counter() - started) / len(done))
        return done

    def _holes(self, records: Sequence[Record]) -> tuple[list[Record], dict[TP, int]]:
        """(the records to process, the offset to read again from per topic-partition).

        Faust's fetcher can hand over a record ahead of the committed offset after a restart or
        a rebalance and then drop the ones in between. Folding it would record its offset in
        the customer's state and make the skipped ones look like re-reads forever (an event
        lost), so such records are held back (not acknowledged, so no commit passes them) and
        the caller seeks back to the first missing one.
        """
        holes: dict[TP, int] = {}
        done: list[Record] = []
        expected = self.expected
        inputs = self.config.inputs
        committed = getattr(self.app.consumer, "_committed_offset", {})
        for record in records:
            if record.topic not in inputs:
                done.append(record)
                continue
            tp = TP(record.topic, record.partition)
            at = expected.get(tp)
            if at is None:
                at = committed.get(tp)
            if tp in holes or (at is not None and record.offset > at):
                holes.setdefault(tp, at)
                continue
            if at is None or record.offset == at:
                expected[tp] = record.offset + 1
            done.append(record)
        return done, holes

    # --- partitions ---------------------------------------------------------------------------

    async def prepare(self, partitions: Iterable[int]) -> None:
        """Start the engines of newly assigned partitions before their first fetch (the direct
        drain calls it once a rebalance has ended), so /readyz says ready only once they can
        process at once: the due-index rebuild of a large table is part of starting, not of
        the first batch."""
        new = sorted(p for p in set(partitions) if p not in self.engines)
        if new:
            await self._say(await self._start(new))

    def started(self, partitions: Iterable[int]) -> bool:
        """True when every one of these partitions has its engine (/readyz)."""
        starting = self._starting
        return all(p in self.engines and p not in starting for p in partitions)

    async def _start(self, partitions: list[int]) -> list[Output]:
        """New partitions: resume their clocks, rebuild their due indexes from the table and
        re-send their outboxes. Returns the replay statuses to say again (after a flush).

        The table is read a chunk at a time (`PartitionedTable.scan`: one partition's database
        after another with `rocksdb://`), each stored customer peeked at rather than decoded,
        and the event loop runs between chunks (HTTP pages, heartbeats). A partition revoked
        meanwhile is dropped from the rest of the read."""
        self._starting.update(partitions)
        try:
            statuses = await self._start_engines(partitions)
        finally:
            self._starting.difference_update(partitions)
        # What exists now (Faust, the clients, the recovered tables, the due indexes) lives as
        # long as the worker: out of the cycle collector's scans. Its full collections took
        # 30-55 ms each, a dozen times in 15 s at 6,000 events/s, and stalled the stream for
        # that long (the worst event-to-decision latencies); the objects made later are few.
        gc.freeze()
        return statuses

    async def _start_engines(self, partitions: list[int]) -> list[Output]:
        started = time.perf_counter()
        engines: dict[int, PartitionEngine] = {}
        for p in partitions:
            engines[p] = self.engines[p] = PartitionEngine(
                p,
                self.config,
                PartitionStore(self.customers, p),
                time=self._stored_time(p),
                positions=self._committed(p),
                projection=self.projection,
            )
        read = 0
        for chunk in self.customers.scan(partitions, chunk=self.scan_chunk):
            live = {p: e for p, e in engines.items() if self.engines.get(p) is e}
            if len(live) < len(engines):
                engines = live
                if not engines:
                    return []
            read += len(chunk)
            gc.disable()  # a chunk makes thousands of short-lived acyclic objects: no cycle
            try:  # collections in the middle (they scan the whole heap: a third of the time)
                slices, unreadable = by_partition(chunk)
                for p, stored in slices.items():  # memory:// holds every partition in one dict
                    engine = engines.get(p)
                    if engine is not None:
                        self._apply(engine.recover(stored))
            finally:
                gc.enable()
            await self._send()  # the re-sent decisions
            for reason, count in unreadable.items():
                self.metrics.unreadable_states.labels(reason).inc(count)
                log.error("%d unreadable customer states in the table (%s): they wake nobody",
                          count, reason)  # fmt: skip
            await asyncio.sleep(0)
        statuses: list[Output] = []
        for p, engine in engines.items():
            if self.engines.get(p) is engine:
                statuses.extend(self._apply(engine.recovered()))
        await self._send()
        log.info("engine started on partitions %s: %d stored customers read in %.1f s",
                 sorted(engines), read, time.perf_counter() - started)  # fmt: skip
        return statuses

    async def _say(self, replay_done: list[Output]) -> None:
        """Send replay statuses, once every decision queued before them is out (a flush)."""
        if replay_done:
            await self.app.producer.flush()  # every decision is out before the news that it is
            for out in replay_done:
                await self.topics[REPLAY_STATUS].send(
                    key=out.key, value=out.value, partition=int(out.key or b"0")
                )

    def _stored_time(self, p: int) -> PartitionTime | None:
        raw = self.control.read(time_key(p), p)
        legacy = self.control.read(f"replay:{p}".encode(), p)
        try:
            if raw is not None:
                return PartitionTime.from_json(json.loads(raw))
            if legacy is not None:  # a replay declared before this version: keep it
                body = json.loads(legacy)
                pt = PartitionTime(progress={})
                pt.replay = Replay(body["replay_id"], dict(body["ends"]), body.get("final"))
                pt.progress = {t: Progress(next_offset=o) for t, o in self._committed(p).items()}
                return pt
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable clock record of partition %s", p)
        return None

    def _committed(self, p: int) -> dict[str, int | None]:
        committed = getattr(self.app.consumer, "_committed_offset", {})
        return {t: committed.get(TP(t, p)) for t in self.config.inputs}

    def _highwaters(self, p: int) -> dict[str, int | None]:
        consumer = self.app.consumer
        out: dict[str, int | None] = {}
        for topic in self.config.inputs:
            try:
                out[topic] = consumer.highwater(TP(topic, p))
            except Exception:  # not assigned (yet), or no fetch answered
                out[topic] = None
        return out

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: whoever gets them rebuilds their engines from the tables."""
        self.metrics.rebalances.inc()
        gone = set(partitions)
        for p in gone:
            self.engines.pop(p, None)
        for tp in [tp for tp in self.expected if tp.partition in gone]:
            del self.expected[tp]

    def latest_clock(self) -> int:
        """The furthest partition clock of this worker (profile reads in replay mode)."""
        return max((e.time.clock for e in self.engines.values()), default=0)

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

    # --- writes, sends, metrics ---------------------------------------------------------------

    def _apply(self, result: BatchResult) -> list[Output]:
        """Queue the batch's writes and sends: erasures' tombstones, changed customers, the
        clock record, then the outputs. Returns the replay statuses (sent after a flush by
        the caller). With a `Sender`, the caller then awaits `_send()`."""
        p = result.partition
        write = self._write
        customers = self.customers
        for key in result.erased:
            write(customers, key, None, p)
        for key, raw in result.states.items():
            write(customers, key, raw, p)
        if result.time is not None:
            write(self.control, time_key(p), result.time, p)
        later: list[Output] = []
        output = self._output
        for out in result.outputs:
            if out.name == REPLAY_STATUS:
                later.append(out)
                continue
            callback = None
            if out.customer is not None and out.nudge_id is not None:
                ident = (p, out.customer, out.nudge_id)
                self.inflight[ident] += 1
                callback = partial(self._sent, ident)
            output(out, callback)
        self._count(result)
        return later

    def _write(self, table: PartitionedTable, key: bytes, value: bytes | None, p: int) -> None:
        """A table write (None: a delete), its changelog record to the changelog partition of
        input partition `p`: queued on the sender, or Faust's `send_soon`."""
        sender = self.sender
        if sender is None:
            if value is None:
                table.remove(key, p)  # the changelog tombstone
            else:
                table.put(key, value, p)
            return
        table.store(key, value, p)
        sender.queue(table.changelog_name, key=key, value=value, partition=p,
                     callback=table.persisted if table.persists_offsets else None)  # fmt: skip

    def _output(self, out: Output, callback: Any) -> None:
        """A decision, nudge, dead letter or receipt: queued on the sender, or `send_soon`."""
        if self.sender is None:
            self.topics[out.name].send_soon(
                key=out.key, value=out.value, headers=out.headers, callback=callback
            )
        else:
            self.sender.queue(self._topic_names[out.name], key=out.key, value=out.value,
                              headers=out.headers, callback=callback)  # fmt: skip

    async def _send(self) -> None:
        """Hand what `_apply` queued to the producer (nothing to do on Faust's path)."""
        if self.sender is not None:
            await self.sender.send()

    def _sent(self, ident: tuple[int, bytes, str], fut: Any) -> None:
        """A decision send was acknowledged; once all of its sends are, clear the outbox."""
        try:
            if fut.exception() is not None:
                return  # stays in the outbox: re-sent after a restart
        except Exception:
            return
        self.inflight[ident] -= 1
        if self.inflight[ident] > 0:
            return
        del self.inflight[ident]
        p, customer, nudge_id = ident
        engine = self.engines.get(p)
        if engine is None:
            return  # revoked meanwhile: the new owner re-sends, same nudge_id
        try:
            raw = engine.acknowledge(customer, [nudge_id])
            if raw is not None:
                self._write(self.customers, customer, raw, p)
                if self.sender is not None:  # behind every write queued before it: one order
                    self.sender.send_later()
        except Exception:
            log.exception("clearing an acknowledged decision failed")

    def projected(self, customer_ids: list[str]) -> None:
        """The Redis projector confirmed these customers' writes: partitions keeping an erasure
        until its Redis deletion is confirmed drop it and write their clock record."""
        for p, engine in list(self.engines.items()):
            raw = engine.projected(customer_ids)
            if raw is not None:
                self._write(self.control, time_key(p), raw, p)
                if self.sender is not None:
                    self.sender.send_later()

    def _count(self, result: BatchResult) -> None:
        m = self.metrics
        m.add_counts(result.counts)
        for event, fcr in result.kpis:
            self.kpis.count(event, fcr)
        if result.decided:
            self.kpis.count_decisions(result.decided)
        observe = m.lag_seconds.observe
        for lag in result.lags_s:
            observe(lag)
        m.partition_clock_child(result.partition).set(result.clock / 1000)
        if self.config.clock.name == "live":
            wall = wall_ms()
            m.watermark_lag_child(result.partition).set(max(wall - result.clock, 0) / 1000)
