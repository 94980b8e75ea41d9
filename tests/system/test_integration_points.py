"""engage's edges against a real worker: the emitter client, wrong partitions, CloudEvents
headers on nudges, and the published JSON Schema examples.

One worker serves the whole module (its start-up is the expensive part); each test uses its
own customers, so they do not depend on each other.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from schemas.events import TOPIC_SUFFIX
from stream import __version__
from stream.client import EngageProducer
from stream.core.partitioning import expected_partition
from tests.harness import Worker, read_all, unique, wait_for

PARTITIONS = 4
RULES = """
version: test-surface
rituals:
  post_purchase_welcome: {holdout_percent: 0}
  three_days_later: {holdout_percent: 0}
  we_noticed: {holdout_percent: 0}
  anniversary: {holdout_percent: 0}
  referral_invite: {holdout_percent: 0}
  loyalty_milestone: {holdout_percent: 0}
guardrails:
  quiet_hours: {enabled: false}
  frequency_cap: {max_delivered: 100, max_marketing: 100}
"""


@pytest.fixture(scope="module")
def worker(stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp("surface")
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    app_id = unique("surface")
    w = Worker(
        bootstrap=stack["kafka"],
        app_id=app_id,
        namespace=app_id,
        log_path=tmp / "worker.log",
        partitions=PARTITIONS,
        extra_env={"ENGAGE_RULES_FILE": str(rules), "ENGAGE_REDIS_ENABLED": "false"},
    )
    w.start()
    yield w
    w.stop()


def recent(minutes: float = 10) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def click(customer: str, n: int) -> dict[str, Any]:
    return {
        "event_id": f"{customer}-click-{n}",
        "customer_id": customer,
        "type": "click",
        "occurred_at": recent(),
        "action": "page_view",
    }


def test_client_messages_land_on_the_murmur2_partition(worker: Worker) -> None:
    customers = [f"client-{i}-kunde-ü" for i in range(60)]
    events = [click(c, n) for c in customers for n in range(2)]

    async def go() -> Any:
        async with EngageProducer(
            bootstrap_servers=worker.bootstrap, namespace=worker.namespace
        ) as producer:
            report = await producer.send_many(events)
            report.invalid.clear()
            bad = await producer.send_many([{**events[0], "type": "teleport"}])
            return report, bad, producer.acked

    report, bad, acked = asyncio.run(go())
    assert report.acked == len(events) and report.ok and acked == len(events)
    assert dict(bad.invalid) == {"unknown_type": 1}
    got = read_all(worker.bootstrap, worker.topic("clicks"))
    mine = [m for m in got if m.key.decode().startswith("client-")]
    assert len(mine) == len(events)
    partitioner = DefaultPartitioner()
    for msg in mine:
        assert msg.partition == expected_partition(msg.key, PARTITIONS)
        assert msg.partition == partitioner(msg.key, list(range(PARTITIONS)), [])
        headers = dict(msg.headers)
        assert headers["ce_type"] == b"io.engage.event.click"
        assert headers["ce_id"] == json.loads(msg.value)["event_id"].encode()
    assert len({m.partition for m in mine}) == PARTITIONS  # the keys spread over all of them

    def folded() -> bool:
        return all(
            (p := worker.profile(quote(c))) is not None and p["counts"].get("click") == 2
            for c in customers[:5]
        )

    wait_for(folded, timeout=60, what="client events folded")


def test_a_crc32_partitioner_is_dead_lettered_as_wrong_partition(worker: Worker) -> None:
    """librdkafka's consistent_random: CRC32 of the key modulo the partition count."""
    wrong, right = [], []
    for i in range(200):
        key = f"crc-{i}".encode()
        crc = zlib.crc32(key) % PARTITIONS
        (wrong if crc != expected_partition(key, PARTITIONS) else right).append((key, crc))
    wrong, right = wrong[:6], right[:2]
    assert wrong and right

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=worker.bootstrap, acks="all")
        await producer.start()
        try:
            for key, crc in wrong + right:
                value = json.dumps(click(key.decode(), 0)).encode()
                await producer.send_and_wait(worker.topic("clicks"), value, key=key, partition=crc)
        finally:
            await producer.stop()

    asyncio.run(produce())

    def dead() -> list[Any] | None:
        got = [
            m for m in read_all(worker.bootstrap, worker.topic("dlq")) if m.key.startswith(b"crc-")
        ]
        return got if len(got) >= len(wrong) else None

    dlq = wait_for(dead, timeout=60, what="wrong_partition dead letters")
    assert sorted(m.key for m in dlq) == sorted(k for k, _ in wrong)
    for msg in dlq:
        headers = dict(msg.headers)
        assert headers["engage.reason"] == b"wrong_partition"
        expected = expected_partition(msg.key, PARTITIONS)
        assert f"partition {expected} of {PARTITIONS}".encode() in headers["engage.message"]
        assert int(headers["engage.original_partition"]) == zlib.crc32(msg.key) % PARTITIONS
    # a key whose CRC32 partition happens to be the murmur2 one is simply folded
    wait_for(lambda: worker.profile(right[0][0].decode()), timeout=30, what="right key folded")
    assert worker.metric("engage_dlq_messages_total", reason="wrong_partition") == len(wrong)


def test_nudges_carry_cloudevents_headers_for_a_plain_consumer(worker: Worker) -> None:
    purchase = {
        "event_id": "ce-purchase-1",
        "customer_id": "ce-bella",
        "type": "purchase",
        "occurred_at": recent(5),
        "order_id": "ce-order-1",
        "amount": "19.90",
        "currency": "EUR",
        "items": 1,
    }

    async def go() -> tuple[Any, Any]:
        async with EngageProducer(
            bootstrap_servers=worker.bootstrap, namespace=worker.namespace
        ) as producer:
            await producer.send(purchase)
        return await _first(worker, "nudges"), await _first(worker, "nudge-decisions")

    nudge, decision = asyncio.run(go())
    for msg, kind, ce_type in (
        (nudge, "nudge", "io.engage.nudge.delivered"),
        (decision, "decision", "io.engage.decision.delivered"),
    ):
        body = json.loads(msg.value)
        headers = {k: v.decode() for k, v in msg.headers}
        assert headers["ce_specversion"] == "1.0"
        assert headers["ce_id"] == body["nudge_id"]
        assert headers["ce_type"] == ce_type
        assert headers["ce_source"] == f"urn:engage:{worker.namespace}"
        assert headers["ce_time"] == body["decided_at"]
        assert headers["ce_subject"] == body["ritual"] == "post_purchase_welcome"
        assert headers["ce_dataschema"] == f"urn:engage:schema:{kind}:{__version__}"
        assert headers["content-type"] == "application/json"
        assert "ce-bella" not in "".join(headers.values())  # the customer is the key only
        assert msg.key == b"ce-bella"


async def _first(worker: Worker, suffix: str) -> Any:
    """The first record on a topic for customer ce-bella, with a plain aiokafka consumer."""
    consumer = AIOKafkaConsumer(
        worker.topic(suffix),
        bootstrap_servers=worker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for msg in msgs:
                    if msg.key == b"ce-bella":
                        return msg
        raise AssertionError(f"no record for ce-bella on {suffix}")
    finally:
        await consumer.stop()


def test_every_schema_example_folds_in_a_real_worker(worker: Worker) -> None:
    """The examples published in schemas/json, produced as they are: none is dead-lettered."""
    from schemas.events import MODELS
    from schemas.export import examples
    from stream.core.partitioning import expected_partition as home

    published = [ex for model in MODELS.values() for ex in examples(model)]
    customers = {ex["customer_id"] for ex in published}

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=worker.bootstrap, acks="all")
        await producer.start()
        try:
            for ex in published:
                key = ex["customer_id"].encode()
                topic = worker.topic(TOPIC_SUFFIX[ex["type"]])
                await producer.send_and_wait(
                    topic, json.dumps(ex).encode(), key=key, partition=home(key, PARTITIONS)
                )
        finally:
            await producer.stop()

    asyncio.run(produce())
    want: dict[str, dict[str, int]] = {}
    for ex in published:
        counts = want.setdefault(ex["customer_id"], {})
        counts[ex["type"]] = counts.get(ex["type"], 0) + 1

    def folded() -> bool:
        return all(
            (p := worker.profile(c)) is not None and p["counts"] == want[c] for c in customers
        )

    wait_for(folded, timeout=60, what="every example folded")
    dlq = read_all(worker.bootstrap, worker.topic("dlq"))
    assert [m for m in dlq if m.key.decode() in customers] == []
