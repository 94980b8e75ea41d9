"""The engage engines over a raw aiokafka consume-and-produce loop, no Faust (`make bench`).

    python bench/raw_engage.py BOOTSTRAP APP_ID NAMESPACE EVENTS PARTITIONS RESULT_FILE

The ceiling of the worker's design in Python: the same `stream.core.engine.PartitionEngine`s
(one per partition, the `EngineConfig` that `engage worker` builds from its default settings:
the default rules, the live clock with its grace, the same limits), fed by the thinnest Kafka
shell there is. Every batch goes through these steps, in this order:

1. `AIOKafkaConsumer.getmany`: up to `ENGAGE_CONSUMER_MAX_POLL_RECORDS` records of the input
   topics, the clock topic and the erasures topic of NAMESPACE (what the worker subscribes to);
2. per partition, `engine.process(records, highwaters=..., wall_ms=..., write=False)`, the
   highwater marks and the wall clock read once per partition per batch, as the worker does;
3. with the worker's write-behind (`ENGAGE_STATE_WRITE_INTERVAL_MS`, and the same reasons to
   write sooner: an erasure, a replay status, half the cache unwritten), once the interval is
   up: `engine.write()` of every partition processed since the last write, produced to the
   changelog partition numbered like the input partition: erased customers' tombstones, each
   changed customer's state (those whose outbox an earlier acknowledgement shortened among
   them, see 6.) to `APP_ID-customers-changelog`, the partition's clock record to
   `APP_ID-control-changelog`;
4. produce every output (decisions, nudges, dead letters, erasure receipts) to its topic;
   replay statuses only after the flush of 5., as the worker does;
5. await the producer's flush (every send of the batch acknowledged by Kafka);
6. note the decisions whose every send Kafka acknowledged: the partition's next batch hands
   them to its engine (`process(acknowledged=...)`, or `settle` for a partition without
   records then), which drops them from their outboxes in that batch's state writes (step 3),
   never in a write of their own;
7. commit the consumed offsets of every batch up to the last write (a batch that did not write
   commits nothing: its records' states are not in the changelog yet).

The process's cycle collector follows the worker's schedule (`stream.adapter.collector`:
no automatic full collection, everything alive frozen once the clients are started, a full
collection when a fetch finds nothing and a minute has passed, or every
`ENGAGE_GC_FULL_INTERVAL_S`), so the ceiling is measured under the same heap policy.

The producer is `stream.kafka_client.producer` with the worker's settings (acks=all,
idempotent, `ENGAGE_PRODUCER_LINGER_MS`, `ENGAGE_PRODUCER_MAX_BATCH_BYTES`, the dead-letter
size as the largest request), the consumer `stream.kafka_client.consumer`. Like the worker in
live mode, a task sends one clock tick per partition every `ENGAGE_TICK_INTERVAL_S`.

When EVENTS input records have gone through step 7 it writes the seconds from the first
batch's arrival to then, and the CPU seconds of the same span, to RESULT_FILE, prints one line
of counts and of the wall time each step took, and stops. With a seventh argument `overlap`
steps 5-7 of a batch run while the next batch is fetched and processed (commits still in
batch order, each after its batch's flush); `serial` (the default) waits for them.

What it leaves out of the worker: the consumer group's rebalances (one process owns every
partition; engines start at their first batch over an empty store), the table's recovery and
the due-index rebuild, Prometheus metrics and KPIs (the engines' counts are only summed in
memory), the HTTP pages, Redis. The store is a dict per partition, like Faust's `memory://`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quix_engage import engine_config  # noqa: E402

from stream.adapter.collector import CycleCollector  # noqa: E402
from stream.core.clock import wall_ms  # noqa: E402
from stream.core.commit import must_write  # noqa: E402
from stream.core.engine import (  # noqa: E402
    REPLAY_STATUS,
    BatchResult,
    EngineConfig,
    Output,
    PartitionEngine,
    Record,
    time_key,
)
from stream.core.interleave import in_time_order  # noqa: E402
from stream.kafka_client import consumer as kafka_consumer  # noqa: E402
from stream.kafka_client import producer as kafka_producer  # noqa: E402
from stream.settings import Settings  # noqa: E402

#: A decision's outbox entry: (partition, customer key, nudge_id).
Ident = tuple[int, bytes, str]


@dataclass
class Settle:
    """What a batch leaves for after its flush: decision sends to acknowledge, replay
    statuses to say, and whether it wrote the states (its offsets may then be committed)."""

    pending: list[tuple[Ident, asyncio.Future[Any]]] = field(default_factory=list)
    later: list[Output] = field(default_factory=list)
    wrote: bool = False


class DictStore:
    """One partition's customers, encoded, in a dict (the engine's `CustomerStore`)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        """The customer's encoded state, or None."""
        return self.data.get(key)


class RawEngage:
    """The partition engines behind one aiokafka consumer and one aiokafka producer."""

    def __init__(
        self,
        settings: Settings,
        config: EngineConfig,
        producer: Any,
        *,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        """`producer` is a started aiokafka producer; topic names come from `settings`;
        `clock` reads the wall clock in milliseconds (tests pass a fixed one)."""
        self.clock = clock
        self.settings = settings
        self.config = config
        self.producer = producer
        self.engines: dict[int, PartitionEngine] = {}
        self.stores: dict[int, DictStore] = {}
        self.customers_changelog, self.control_changelog = settings.changelog_topics()
        self.topics = {
            "decisions": settings.decisions_topic,
            "nudges": settings.nudges_topic,
            "dlq": settings.dlq_topic,
            "replay_status": settings.replay_status_topic,
            "erasure_receipts": settings.erasure_receipts_topic,
        }
        # Per partition, customer -> nudge_ids whose sends Kafka acknowledged: they leave their
        # outboxes in the partition's next batch (`process(acknowledged=...)` or `settle`).
        self.acked: dict[int, dict[bytes, set[str]]] = {}
        self.write_interval_s = settings.state_write_interval_ms / 1000  # the worker's
        self.last_write = time.monotonic()
        self.unwritten: set[int] = set()  # partitions processed since their last write
        self.counts: Counter[tuple[str, ...]] = Counter()
        #: Wall seconds per step (fetch, process, send, flush, acknowledge, commit): where the
        #: loop's time goes, printed at the end.
        self.seconds: Counter[str] = Counter()

    def _engine(self, p: int) -> PartitionEngine:
        engine = self.engines.get(p)
        if engine is None:
            store = self.stores[p] = DictStore()
            engine = self.engines[p] = PartitionEngine(p, self.config, store)
        return engine

    async def apply(
        self, records: Sequence[Record], highwaters: Any, *, write: bool = False
    ) -> Settle:
        """Steps 2-4 of the module docstring for one fetch; `highwaters(topic, p)` reads the
        consumer's end offset of a topic-partition (None when unknown). Returns what `settle`
        needs once the sends are flushed.

        The decisions acknowledged since the last batch go into each partition's `process`
        (or, for a partition without records in this fetch, its `settle`): they leave their
        outboxes in this batch's state writes. Everything up to the first send runs without
        yielding to the event loop, so an acknowledgement made meanwhile (`overlap`) waits
        for the next batch."""
        slices: dict[int, list[Record]] = {}
        for record in records:
            part = slices.get(record.partition)
            if part is None:
                part = slices[record.partition] = []
            part.append(record)
        now = self.clock()
        inputs = self.config.inputs
        uses_highwaters = self.config.clock.uses_highwaters
        acked, self.acked = self.acked, {}
        started = time.perf_counter()
        results: list[BatchResult] = []
        for p, part in slices.items():
            engine = self._engine(p)
            hw = {t: highwaters(t, p) for t in inputs} if uses_highwaters else None
            results.append(
                engine.process(part, highwaters=hw, wall_ms=now, acknowledged=acked.pop(p, None),
                               write=False)
            )  # fmt: skip
        for p, ids in acked.items():  # acknowledgements of partitions without records
            results.append(self.engines[p].settle(ids, write=False))
        self.unwritten.update(slices)
        self.unwritten.update(acked)
        writes: list[BatchResult] = []
        if write or self._write_due(results):
            writes = [self.engines[p].write() for p in sorted(self.unwritten)]
            self.unwritten.clear()
            self.last_write = time.monotonic()
        for result in writes:
            data = self.stores[result.partition].data
            for key in result.erased:
                data.pop(key, None)
            data.update(result.states)
        sending = time.perf_counter()
        self.seconds["process"] += sending - started
        settle = Settle(wrote=write or bool(writes))
        for result in writes:
            await self._write_states(result)
        for result in results:
            await self._write(result, settle)
        self.seconds["send"] += time.perf_counter() - sending
        return settle

    async def settle(self, settle: Settle) -> None:
        """Steps 5 and 6: flush, then note the decisions whose every send Kafka acknowledged
        (for the next batch); then the replay statuses, flushed too."""
        started = time.perf_counter()
        await self.producer.flush()
        flushed = time.perf_counter()
        self._acknowledge(settle.pending)
        self.seconds["flush"] += flushed - started
        self.seconds["acknowledge"] += time.perf_counter() - flushed
        for out in settle.later:
            await self.producer.send(
                self.topics[out.name], out.value, out.key, int(out.key or b"0"), None, out.headers
            )
        if settle.later:
            await self.producer.flush()

    def _write_due(self, results: list[BatchResult]) -> bool:
        """The worker's reasons to write (`stream.core.commit.Checkpoint._write_due`)."""
        if self.write_interval_s <= 0:
            return True
        engines = [self.engines[p] for p in self.unwritten]
        if must_write(results, engines, bound=self.config.cached_states // 2):
            return True
        return time.monotonic() - self.last_write >= self.write_interval_s

    async def _write_states(self, result: BatchResult) -> None:
        """Step 3 for one partition's write: its tombstones, its changed states (the
        acknowledged outboxes among them), its clock record."""
        p = result.partition
        send = self.producer.send
        changelog = self.customers_changelog
        for key in result.erased:
            await send(changelog, None, key, p)
        for key, raw in result.states.items():
            await send(changelog, raw, key, p)
        if result.time is not None:
            await send(self.control_changelog, result.time, time_key(p), p)

    async def _write(self, result: BatchResult, settle: Settle) -> None:
        """Step 4 for one partition's result: its outputs (replay statuses kept for
        `settle`)."""
        p = result.partition
        send = self.producer.send
        topics = self.topics
        for out in result.outputs:
            if out.name == REPLAY_STATUS:
                settle.later.append(out)
                continue
            fut = await send(topics[out.name], out.value, out.key, None, None, out.headers)
            if out.customer is not None and out.nudge_id is not None:  # a decision or nudge
                settle.pending.append(((p, out.customer, out.nudge_id), fut))
        self.counts.update(result.counts)

    def _acknowledge(self, pending: list[tuple[Ident, asyncio.Future[Any]]]) -> None:
        """Step 6: a decision every send of which (decisions topic, and nudges topic when
        delivered) Kafka acknowledged is noted for its partition's next batch."""
        ok: dict[Ident, bool] = {}
        for ident, fut in pending:
            done = fut.done() and not fut.cancelled() and fut.exception() is None
            ok[ident] = ok.get(ident, True) and done
        for (p, customer, nudge_id), acknowledged in ok.items():
            if acknowledged:
                self.acked.setdefault(p, {}).setdefault(customer, set()).add(nudge_id)


async def ticks(producer: Any, settings: Settings) -> None:
    """The worker's live-mode timer: one tick per partition every `tick_interval_s`."""
    value = json.dumps({"kind": "tick"}).encode()
    while True:
        await asyncio.sleep(settings.tick_interval_s)
        for p in range(settings.partitions):
            await producer.send(settings.clock_topic, value, None, p)


async def run(settings: Settings, n: int, result_file: Path, *, overlap: bool) -> None:
    """Consume, process, produce, flush and commit until n input records are committed.
    With `overlap` a batch's flush, acknowledgements and commit run while the next batch is
    fetched and processed (commits still in batch order, each after its batch's flush)."""
    config = engine_config(settings.topic_namespace, settings.partitions)
    topics = [*config.inputs, settings.clock_topic, settings.erasures_topic]
    producer = kafka_producer(
        settings,
        linger_ms=settings.producer_linger_ms,
        max_batch_size=settings.producer_max_batch_bytes,
        max_request_size=settings.dlq_max_bytes,
    )
    consumer = kafka_consumer(
        settings,
        *topics,
        group_id=settings.app_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=settings.consumer_max_poll_records,
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,  # the worker's
        fetch_min_bytes=settings.consumer_fetch_min_bytes,
    )
    await producer.start()
    await consumer.start()
    collector = CycleCollector(interval_s=settings.gc_full_interval_s)
    collector.install()
    collector.freeze()
    ticker = asyncio.ensure_future(ticks(producer, settings))
    core = RawEngage(settings, config, producer)
    inputs = config.inputs
    from aiokafka import TopicPartition

    def highwater(topic: str, p: int) -> int | None:
        try:
            return consumer.highwater(TopicPartition(topic, p))
        except Exception:  # not assigned
            return None

    async def finish(settle: Settle, offsets: dict[Any, int]) -> None:
        await core.settle(settle)
        if offsets:
            started = time.perf_counter()
            await consumer.commit(offsets)
            core.seconds["commit"] += time.perf_counter() - started

    held: dict[Any, int] = {}  # offsets of the batches since the last write

    def committable(settle: Settle, offsets: dict[Any, int]) -> dict[Any, int]:
        held.update(offsets)
        if not settle.wrote:
            return {}
        out = dict(held)
        held.clear()
        return out

    finishing: asyncio.Future[None] | None = None
    seen, first, first_cpu, batches = 0, 0.0, 0.0, 0
    try:
        while seen < n:
            fetching = time.perf_counter()
            fetched = await consumer.getmany(
                timeout_ms=int(settings.batch_within_s * 1000),
                max_records=settings.consumer_max_poll_records,
            )
            if not fetched:
                collector.idle()
                continue
            if not first:
                first, first_cpu = time.perf_counter(), time.process_time()
            else:
                core.seconds["fetch"] += time.perf_counter() - fetching
            batches += 1
            records: list[Record] = []
            offsets: dict[Any, int] = {}
            for tp, msgs in fetched.items():
                for m in msgs:
                    records.append(
                        Record(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value,
                               tuple(m.headers or ()))
                    )  # fmt: skip
                    if m.topic in inputs:
                        seen += 1
                offsets[tp] = msgs[-1].offset + 1
            records = in_time_order(records)  # as the worker's drain hands them over
            settle = await core.apply(records, highwater, write=seen >= n)
            ready = committable(settle, offsets)
            if overlap:
                if finishing is not None:
                    await finishing  # commits in batch order
                finishing = asyncio.ensure_future(finish(settle, ready))
            else:
                await finish(settle, ready)
            collector.busy()
        if finishing is not None:
            await finishing
        elapsed = time.perf_counter() - first
        cpu = time.process_time() - first_cpu
        counts = core.counts
        steps = ", ".join(f"{k} {v:.2f} s" for k, v in core.seconds.items())
        print(f"{seen} events in {batches} batches, {elapsed:.2f} s ({cpu:.2f} s CPU): "
              f"{sum(v for k, v in counts.items() if k[0] == 'decision')} decisions, "
              f"{sum(v for k, v in counts.items() if k[0] == 'dlq')} dead letters; {steps}"
              f"{' (flush and commit overlapped)' if overlap else ''}", flush=True)  # fmt: skip
        result_file.write_text(f"{elapsed:.6f} {cpu:.6f}")
    finally:
        ticker.cancel()
        await consumer.stop()
        await producer.stop()


def main() -> None:
    """Run the raw loop until EVENTS input records are committed."""
    bootstrap, app_id, namespace, events, partitions, result = sys.argv[1:7]
    overlap = sys.argv[7:8] == ["overlap"]
    settings = Settings(
        broker=f"kafka://{bootstrap}", app_id=app_id, topic_namespace=namespace,
        partitions=int(partitions),
    )  # fmt: skip
    from stream.adapter.topics import ensure_topics

    asyncio.run(ensure_topics(settings))  # this app's changelog topics
    asyncio.run(run(settings, int(events), Path(result), overlap=overlap))


if __name__ == "__main__":
    main()
