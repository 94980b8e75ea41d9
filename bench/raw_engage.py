"""The engage engines over a raw aiokafka consume-and-produce loop, no Faust (`make bench`).

    python bench/raw_engage.py BOOTSTRAP APP_ID NAMESPACE EVENTS PARTITIONS RESULT_FILE

The ceiling of the worker's design in Python: the same `stream.core.engine.PartitionEngine`s
(one per partition, the `EngineConfig` that `engage worker` builds from its default settings:
the default rules, the live clock with its grace, the same limits), fed by the thinnest Kafka
shell there is. Every batch goes through these steps, in this order:

1. `AIOKafkaConsumer.getmany`: up to `ENGAGE_CONSUMER_MAX_POLL_RECORDS` records of the input
   topics, the clock topic and the erasures topic of NAMESPACE (what the worker subscribes to);
2. per partition, `engine.process(records, highwaters=..., wall_ms=...)`, the highwater marks
   and the wall clock read once per partition per batch, as the worker does;
3. produce the batch's writes to the changelog partition numbered like the input partition:
   erased customers' tombstones, each changed customer's state (and any state whose outbox an
   earlier acknowledgement cleared, see 6.) to `APP_ID-customers-changelog`, the partition's
   clock record to `APP_ID-control-changelog`;
4. produce every output (decisions, nudges, dead letters, erasure receipts) to its topic;
   replay statuses only after the flush of 5., as the worker does;
5. await the producer's flush (every send of the batch acknowledged by Kafka);
6. drop the batch's acknowledged decisions from their customers' outboxes
   (`engine.acknowledge`): the new states are kept in memory and written with the next
   batch's changelog writes (step 3), not by a write of their own;
7. commit the consumed offsets.

The producer is `stream.kafka_client.producer` with the worker's settings (acks=all,
idempotent, `ENGAGE_PRODUCER_LINGER_MS`, `ENGAGE_PRODUCER_MAX_BATCH_BYTES`, the dead-letter
size as the largest request), the consumer `stream.kafka_client.consumer`. Like the worker in
live mode, a task sends one clock tick per partition every `ENGAGE_TICK_INTERVAL_S`.

When EVENTS input records have gone through step 7 it writes the seconds from the first
batch's arrival to then to RESULT_FILE (and one line of counts to stdout) and stops.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quix_engage import engine_config  # noqa: E402

from stream.core.clock import wall_ms  # noqa: E402
from stream.core.engine import (  # noqa: E402
    DECISIONS,
    REPLAY_STATUS,
    BatchResult,
    EngineConfig,
    Output,
    PartitionEngine,
    Record,
    time_key,
)
from stream.kafka_client import consumer as kafka_consumer  # noqa: E402
from stream.kafka_client import producer as kafka_producer  # noqa: E402
from stream.settings import Settings  # noqa: E402

#: A decision's outbox entry: (partition, customer key, nudge_id).
Ident = tuple[int, bytes, str]


class DictStore:
    """One partition's customers, encoded, in a dict (the engine's `CustomerStore`)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        """The customer's encoded state, or None."""
        return self.data.get(key)


class RawEngage:
    """The partition engines behind one aiokafka consumer and one aiokafka producer."""

    def __init__(self, settings: Settings, config: EngineConfig, producer: Any) -> None:
        """`producer` is a started aiokafka producer; topic names come from `settings`."""
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
        # Acknowledged decisions' new states, written with the next batch's changelog writes.
        self.cleared: dict[int, dict[bytes, bytes]] = {}
        self.counts: Counter[tuple[str, ...]] = Counter()

    def _engine(self, p: int) -> PartitionEngine:
        engine = self.engines.get(p)
        if engine is None:
            store = self.stores[p] = DictStore()
            engine = self.engines[p] = PartitionEngine(p, self.config, store)
        return engine

    async def batch(self, records: Sequence[Record], highwaters: Any) -> None:
        """Steps 2-6 of the module docstring for one fetch; `highwaters(topic, p)` reads the
        consumer's end offset of a topic-partition (None when unknown)."""
        slices: dict[int, list[Record]] = {}
        for record in records:
            part = slices.get(record.partition)
            if part is None:
                part = slices[record.partition] = []
            part.append(record)
        now = wall_ms()
        inputs = self.config.inputs
        uses_highwaters = self.config.clock.uses_highwaters
        results: list[BatchResult] = []
        for p, part in slices.items():
            engine = self._engine(p)
            hw = {t: highwaters(t, p) for t in inputs} if uses_highwaters else None
            results.append(engine.process(part, highwaters=hw, wall_ms=now))
        pending: list[tuple[Ident, asyncio.Future[Any]]] = []
        later: list[Output] = []
        for result in results:
            later.extend(await self._write(result, pending))
        for p, cleared in self.cleared.items():  # partitions the batch did not touch
            for key, raw in cleared.items():
                await self.producer.send(self.customers_changelog, raw, key, p)
        self.cleared = {}
        await self.producer.flush()
        self._acknowledge(pending)
        for out in later:
            await self.producer.send(
                self.topics[out.name], out.value, out.key, int(out.key or b"0"), None, out.headers
            )
        if later:
            await self.producer.flush()

    async def _write(
        self, result: BatchResult, pending: list[tuple[Ident, asyncio.Future[Any]]]
    ) -> list[Output]:
        """Steps 3 and 4 for one partition's result; returns its replay statuses."""
        p = result.partition
        data = self.stores[p].data
        send = self.producer.send
        changelog = self.customers_changelog
        for key in result.erased:
            data.pop(key, None)
            await send(changelog, None, key, p)
        cleared = self.cleared.pop(p, {})
        for key, raw in result.states.items():
            data[key] = raw
            cleared.pop(key, None)  # the batch's state of this customer is newer
            await send(changelog, raw, key, p)
        for key, raw in cleared.items():
            await send(changelog, raw, key, p)
        if result.time is not None:
            await send(self.control_changelog, result.time, time_key(p), p)
        later: list[Output] = []
        topics = self.topics
        for out in result.outputs:
            if out.name == REPLAY_STATUS:
                later.append(out)
                continue
            fut = await send(topics[out.name], out.value, out.key, None, None, out.headers)
            if out.name == DECISIONS and out.customer is not None and out.nudge_id is not None:
                pending.append(((p, out.customer, out.nudge_id), fut))
        self.counts.update(result.counts)
        return later

    def _acknowledge(self, pending: list[tuple[Ident, asyncio.Future[Any]]]) -> None:
        """Step 6: decisions whose send Kafka acknowledged leave their customers' outboxes
        (in the store now, in the changelog with the next batch's writes)."""
        acked: dict[tuple[int, bytes], list[str]] = {}
        for (p, customer, nudge_id), fut in pending:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                acked.setdefault((p, customer), []).append(nudge_id)
        for (p, customer), ids in acked.items():
            raw = self.engines[p].acknowledge(customer, ids)
            if raw is not None:
                self.stores[p].data[customer] = raw
                self.cleared.setdefault(p, {})[customer] = raw


async def ticks(producer: Any, settings: Settings) -> None:
    """The worker's live-mode timer: one tick per partition every `tick_interval_s`."""
    value = json.dumps({"kind": "tick"}).encode()
    while True:
        await asyncio.sleep(settings.tick_interval_s)
        for p in range(settings.partitions):
            await producer.send(settings.clock_topic, value, None, p)


async def run(settings: Settings, n: int, result_file: Path) -> None:
    """Consume, process, produce, flush and commit until n input records are committed."""
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
    )
    await producer.start()
    await consumer.start()
    ticker = asyncio.ensure_future(ticks(producer, settings))
    core = RawEngage(settings, config, producer)
    inputs = config.inputs
    from aiokafka import TopicPartition

    def highwater(topic: str, p: int) -> int | None:
        try:
            return consumer.highwater(TopicPartition(topic, p))
        except Exception:  # not assigned
            return None

    seen, first = 0, 0.0
    try:
        while seen < n:
            fetched = await consumer.getmany(
                timeout_ms=int(settings.batch_within_s * 1000),
                max_records=settings.consumer_max_poll_records,
            )
            if not fetched:
                continue
            if not first:
                first = time.perf_counter()
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
            await core.batch(records, highwater)
            await consumer.commit(offsets)
        elapsed = time.perf_counter() - first
        counts = core.counts
        print(f"{seen} events: {sum(v for k, v in counts.items() if k[0] == 'decision')} "
              f"decisions, {sum(v for k, v in counts.items() if k[0] == 'dlq')} dead letters",
              flush=True)  # fmt: skip
        result_file.write_text(f"{elapsed:.6f}")
    finally:
        ticker.cancel()
        await consumer.stop()
        await producer.stop()


def main() -> None:
    """Run the raw loop until EVENTS input records are committed."""
    bootstrap, app_id, namespace, events, partitions, result = sys.argv[1:7]
    settings = Settings(
        broker=f"kafka://{bootstrap}", app_id=app_id, topic_namespace=namespace,
        partitions=int(partitions),
    )  # fmt: skip
    from stream.adapter.topics import ensure_topics

    asyncio.run(ensure_topics(settings))  # this app's changelog topics
    asyncio.run(run(settings, int(events), Path(result)))


if __name__ == "__main__":
    main()
