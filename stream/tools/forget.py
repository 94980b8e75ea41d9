"""`engage forget CUSTOMER_ID [...] [--wait]`: ask the workers to erase customers.

Each id becomes one request on `{namespace}.erasures`, keyed by the customer id (so Kafka's
default partitioner puts it on the partition that holds the customer). The worker owning that
partition deletes the customer's state, timers, queued events and Redis keys and writes a
receipt on `{namespace}.erasure-receipts`; `--wait` prints those receipts, one JSON object per
line, as they arrive.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from stream.adapter.faust_private import refresh_metadata
from stream.adapter.topics import TopicMismatch, ensure_topics
from stream.cli import command_parser
from stream.kafka_client import KafkaAccessError, consumer, describe_error, producer
from stream.settings import Settings, load_settings


def request(customer_id: str, now: datetime) -> dict[str, str]:
    """One erasure request for `customer_id` (a fresh request id)."""
    return {
        "request_id": uuid.uuid4().hex,
        "customer_id": customer_id,
        "requested_at": now.astimezone(UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
    }


async def _receipt_positions(settings: Settings) -> tuple[Any, list[TopicPartition]]:
    """A consumer placed at the current end of the receipts topic (before we send)."""
    c = consumer(settings, enable_auto_commit=False)
    await c.start()
    topic = settings.erasure_receipts_topic
    partitions = c.partitions_for_topic(topic)
    if not partitions:
        await refresh_metadata(c)
        partitions = c.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    c.assign(tps)
    await c.seek_to_end(*tps)
    for tp in tps:
        await c.position(tp)  # resolve the end now, so receipts sent later are all read
    return c, tps


async def forget(
    settings: Settings, customer_ids: list[str], *, wait: bool, timeout_s: float
) -> list[dict[str, Any]]:
    """Send one request per customer; with `wait`, return the receipts (else the requests)."""
    await ensure_topics(settings)
    receipts_consumer = None
    if wait:
        receipts_consumer, _ = await _receipt_positions(settings)
    sent = [request(cid, datetime.now(UTC)) for cid in customer_ids]
    p = producer(settings)
    try:
        await p.start()
        for body in sent:
            await p.send_and_wait(
                settings.erasures_topic,
                key=body["customer_id"].encode("utf-8"),
                value=json.dumps(body).encode("utf-8"),
            )
    finally:
        await p.stop()
    if receipts_consumer is None:
        return sent
    wanted = {body["request_id"] for body in sent}
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no receipt after {timeout_s:g} s for {len(wanted)} request(s): "
                    "is a worker running with this ENGAGE_TOPIC_NAMESPACE?"
                )
            batch = await receipts_consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for msg in messages:
                    record = json.loads(msg.value)
                    if record.get("request_id") in wanted:
                        wanted.discard(record["request_id"])
                        got.append(record)
    finally:
        await receipts_consumer.stop()
    return got


def main(argv: list[str]) -> int:
    parser = command_parser("forget", __doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("customer_ids", nargs="+", metavar="CUSTOMER_ID")
    parser.add_argument("--wait", action="store_true", help="print the receipts when they come")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits")
    args = parser.parse_args(argv)
    settings = load_settings()
    try:
        out = asyncio.run(
            forget(settings, args.customer_ids, wait=args.wait, timeout_s=args.timeout)
        )
    except TopicMismatch as exc:
        print(f"engage forget: {exc}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(f"engage forget: {exc}", file=sys.stderr)
        return 1
    except (KafkaError, KafkaAccessError, OSError) as exc:
        print(f"engage forget: {describe_error(exc, settings)}", file=sys.stderr)
        return 1
    for record in out:
        print(json.dumps(record, sort_keys=True))
    if not args.wait:
        print(f"sent {len(out)} erasure request(s) to {settings.erasures_topic}", file=sys.stderr)
    return 0
