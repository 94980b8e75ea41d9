"""The raw aiokafka benchmark row runs the engage engines faithfully (`bench/raw_engage.py`).

Its shell (`RawEngage`) is driven here with a producer that records every send in memory, so
the tests need no broker and check that the row measures the real work: the same decisions,
counts and customer states as the in-process driver for the same records and wall clock, every
changed state on the changelog partition of its input partition, and an acknowledged decision
cleared from its customer's outbox by the next batch's changelog write, never by one of its own.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from bench.core import NS, PARTITIONS, records
from bench.quix_engage import engine_config
from bench.raw_engage import RawEngage
from stream.core.clock import wall_ms
from stream.core.driver import MemoryDriver
from stream.core.state import decode
from stream.settings import Settings

SETTINGS = Settings(
    app_id="raw-test", topic_namespace=NS, partitions=PARTITIONS, state_write_interval_ms=0
)
CUSTOMERS, CONTROL = SETTINGS.changelog_topics()


def caught_up(topic: str, partition: int) -> int:
    """Highwater marks saying every input is read to its end, as the driver's empty mapping
    does: the live clock then follows the wall clock, on both paths."""
    return 0


@dataclass
class RecordingProducer:
    """The aiokafka producer calls `RawEngage` makes, recorded in order; a send to a topic in
    `failing` is answered with an error (Kafka refused it)."""

    sent: list[tuple[str, bytes | None, bytes | None, int | None]] = field(default_factory=list)
    failing: frozenset[str] = frozenset()
    flushes: int = 0

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Any = None,
    ) -> asyncio.Future[None]:
        self.sent.append((topic, key, value, partition))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if topic in self.failing:
            fut.set_exception(RuntimeError("refused"))
        else:
            fut.set_result(None)
        return fut

    async def flush(self) -> None:
        self.flushes += 1

    def latest(self, topic: str) -> dict[bytes, tuple[bytes | None, int | None]]:
        """The last (value, partition) sent per key to a topic (what compaction keeps)."""
        return {k: (v, p) for t, k, v, p in self.sent if t == topic and k is not None}


def run_raw(producer: RecordingProducer, batches: list[list[Any]], wall: int) -> RawEngage:
    """Each batch through apply then settle (the serial loop), then one empty batch, which
    writes the states whose decisions the last settle found acknowledged."""
    config = engine_config(NS, PARTITIONS)

    async def go() -> RawEngage:
        core = RawEngage(SETTINGS, config, producer, clock=lambda: wall)
        for batch in [*batches, []]:
            settle = await core.apply(batch, caught_up)
            await core.settle(settle)
        return core

    return asyncio.run(go())


def test_raw_row_decides_and_writes_what_the_driver_does() -> None:
    recs = records(3000, seed=1)
    batches = [recs[i : i + 500] for i in range(0, len(recs), 500)]
    wall = wall_ms() + 3_600_000  # after the traffic: both paths see one wall clock
    config = engine_config(NS, PARTITIONS)
    driver = MemoryDriver(config)
    for batch in batches:
        driver.pipe(batch, highwaters={t: 0 for t in config.inputs}, wall_ms=wall)
    driver.settle()  # the last batch's acknowledgements, like the raw row's empty batch

    producer = RecordingProducer()
    core = run_raw(producer, batches, wall)

    decisions: dict[str, bytes] = {}
    for topic, _key, value, _p in producer.sent:
        if topic == SETTINGS.decisions_topic and value is not None:
            decisions.setdefault(json.loads(value)["nudge_id"], value)
    assert driver.decisions(), "the traffic must decide something for the comparison to matter"
    assert decisions == driver.decisions()
    assert core.counts == driver.counts
    changelog = producer.latest(CUSTOMERS)
    assert {k: v for k, (v, _p) in changelog.items()} == driver.customers
    for raw, p in changelog.values():
        assert raw is not None and decode(raw).partition == p  # the input partition's
        assert decode(raw).outbox == []  # every send acknowledged: every outbox cleared
    assert set(producer.latest(CONTROL)) == {f"partition:{p}".encode() for p in range(PARTITIONS)}


def test_raw_row_with_write_behind_writes_each_customer_once_and_ends_where_the_driver_does(
) -> None:
    recs = records(3000, seed=1)
    batches = [recs[i : i + 500] for i in range(0, len(recs), 500)]
    wall = wall_ms() + 3_600_000
    config = engine_config(NS, PARTITIONS)
    driver = MemoryDriver(config)
    for batch in batches:
        driver.pipe(batch, highwaters={t: 0 for t in config.inputs}, wall_ms=wall)
    driver.settle()
    behind = Settings(app_id="raw-test", topic_namespace=NS, partitions=PARTITIONS,
                      state_write_interval_ms=60_000)  # fmt: skip
    producer = RecordingProducer()

    async def go() -> list[bool]:
        core = RawEngage(behind, config, producer, clock=lambda: wall)
        wrote = []
        for batch in batches:
            settle = await core.apply(batch, caught_up)
            await core.settle(settle)
            wrote.append(settle.wrote)
        for _ in range(2):  # the states, then the outboxes the last acknowledgements cleared
            settle = await core.apply([], caught_up, write=True)
            await core.settle(settle)
        return wrote

    assert asyncio.run(go()) == [False] * len(batches), "held back until the interval is up"
    written = [k for t, k, _v, _p in producer.sent if t == CUSTOMERS]
    assert len(written) <= 2 * len(set(written)), "each customer once per write"
    assert {k: v for k, (v, _p) in producer.latest(CUSTOMERS).items()} == driver.customers


def test_an_acknowledged_decision_leaves_the_outbox_with_the_next_batch_write() -> None:
    recs = records(3000, seed=1)
    wall = wall_ms() + 3_600_000
    producer = RecordingProducer()
    config = engine_config(NS, PARTITIONS)

    async def go() -> tuple[int, int]:
        core = RawEngage(SETTINGS, config, producer, clock=lambda: wall)
        settle = await core.apply(recs, caught_up)
        decided = {c for (_p, c, _n), _f in settle.pending}
        assert decided, "the batch must decide something"
        writes = len(producer.sent)
        await core.settle(settle)  # acknowledged: nothing written for it yet
        assert not [s for s in producer.sent[writes:] if s[0] == CUSTOMERS]
        assert all(decode(core.stores[p].data[c]).outbox for (p, c, _n), _f in settle.pending)
        await core.apply([], caught_up)  # the next batch writes them, outboxes cleared
        cleared = {
            k: v for t, k, v, _p in producer.sent[writes:] if t == CUSTOMERS and v is not None
        }
        assert all(decode(raw).outbox == [] for raw in cleared.values())
        return len(decided), len(set(cleared) & decided)

    decided, rewritten = asyncio.run(go())
    assert rewritten == decided


def test_a_refused_decision_send_stays_in_the_outbox() -> None:
    recs = records(3000, seed=1)
    wall = wall_ms() + 3_600_000
    producer = RecordingProducer(failing=frozenset({SETTINGS.decisions_topic}))
    core = run_raw(producer, [recs], wall)
    kept = [
        raw for store in core.stores.values() for raw in store.data.values() if decode(raw).outbox
    ]
    assert kept, "a decision Kafka refused must stay in its customer's outbox (re-sent later)"
