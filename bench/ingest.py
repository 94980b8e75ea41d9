"""Throughput of the ingest-and-fold worker over real Kafka, next to a plain aiokafka loop.

Produces N events across the six input topics of a fresh namespace, then measures in the same
run: (1) a bare aiokafka consume-and-decode loop (`json.loads` per message) over those topics,
the ceiling of what Python can read; (2) the `engage worker` (validation, dedup, fold, table
write, changelog) in each processing guarantee. Prints events per second and the ratios.

    .venv/bin/python bench/ingest.py --events 50000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.events import TOPIC_SUFFIX  # noqa: E402
from tests.harness import Worker, produce, unique, wait_for  # noqa: E402

KINDS = ["click"] * 14 + ["purchase"] * 2 + ["review", "support_contact", "survey", "loyalty"]


def synthetic(n: int, customers: int, seed: int) -> list[tuple[str, bytes, bytes, str]]:
    """(topic suffix, key, value, type): a click-heavy mix over `customers` customers."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=60)
    out = []
    for i in range(n):
        cust = f"cust-{rng.randrange(customers)}"
        kind = rng.choice(KINDS)
        evt: dict[str, object] = {
            "event_id": f"e-{seed}-{i}",
            "customer_id": cust,
            "type": kind,
            "occurred_at": (start + timedelta(seconds=i * 60 * 60 * 24 * 60 / n)).isoformat(),
        }
        if kind == "click":
            evt |= {"action": rng.choice(["page_view", "search", "link_click", "share"])}
        elif kind == "purchase":
            evt |= {
                "order_id": f"o-{i}",
                "amount": f"{rng.uniform(5, 200):.2f}",
                "currency": "EUR",
                "items": rng.randint(1, 4),
            }
        elif kind == "review":
            evt |= {"review_id": f"r-{i}", "rating": rng.randint(1, 5), "channel": "site"}
        elif kind == "support_contact":
            evt |= {
                "contact_id": f"k-{i}",
                "ticket_id": f"t-{rng.randrange(3)}",
                "channel": "chat",
                "status": rng.choice(["opened", "resolved"]),
                "complaint": rng.random() < 0.5,
            }
        elif kind == "survey":
            evt |= {"survey": "nps", "score": rng.randint(0, 10)}
        else:
            evt |= {"action": "points_earned", "points": rng.randint(1, 100)}
        out.append((TOPIC_SUFFIX[kind], cust.encode(), json.dumps(evt).encode(), kind))
    return out


async def baseline(bootstrap: str, topics: list[str], n: int) -> float:
    """Seconds for a bare aiokafka loop to consume and JSON-decode all n messages."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=unique("bench-baseline"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        seen = 0
        started = 0.0
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for msgs in batch.values():
                if msgs and not started:
                    started = time.perf_counter()
                for msg in msgs:
                    json.loads(msg.value)
                seen += len(msgs)
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def run_worker(bootstrap: str, namespace: str, n: int, guarantee: str, logdir: Path) -> float:
    """Seconds from the worker's first processed event to its n-th."""
    app_id = unique(f"bench-{guarantee}")
    worker = Worker(
        bootstrap=bootstrap,
        app_id=app_id,
        namespace=namespace,
        log_path=logdir / f"{app_id}.log",
        extra_env={"ENGAGE_PROCESSING_GUARANTEE": guarantee, "ENGAGE_LOG_LEVEL": "warning"},
    )
    worker.start(timeout=120)
    try:
        first = wait_for(
            lambda: worker.metric("engage_events_processed_total") > 0 and time.perf_counter(),
            timeout=120,
            interval=0.02,
            what="first event",
        )
        wait_for(
            lambda: worker.metric("engage_events_processed_total") >= n,
            timeout=900,
            interval=0.1,
            what=f"{n} events processed",
        )
        return time.perf_counter() - first
    finally:
        worker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--guarantees", default="at_least_once,exactly_once", help="comma-separated modes"
    )
    parser.add_argument("--bootstrap", help="an existing broker; default: the local stack")
    args = parser.parse_args()

    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        from stream.devstack import ensure_up

        bootstrap = ensure_up(("kafka",))["kafka"]
    namespace = unique("bench")
    messages = synthetic(args.events, args.customers, args.seed)
    topics = sorted({f"{namespace}.{suffix}" for suffix in TOPIC_SUFFIX.values()})

    from stream.settings import Settings
    from stream.topics import ensure_topics

    asyncio.run(
        ensure_topics(
            Settings(broker=f"kafka://{bootstrap}", topic_namespace=namespace, partitions=4)
        )
    )
    t0 = time.perf_counter()
    produce(bootstrap, [(f"{namespace}.{s}", k, v) for s, k, v, _ in messages])
    produce_s = time.perf_counter() - t0
    print(f"produced {args.events} events to {len(topics)} topics in {produce_s:.1f} s")

    base_s = asyncio.run(baseline(bootstrap, topics, args.events))
    base_rate = args.events / base_s
    print(f"aiokafka consume+decode   {base_rate:>10,.0f} events/s  ({base_s:.2f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        for guarantee in args.guarantees.split(","):
            secs = run_worker(bootstrap, namespace, args.events, guarantee, Path(tmp))
            rate = args.events / secs
            print(
                f"engage worker {guarantee:<13} {rate:>8,.0f} events/s  ({secs:.2f} s)"
                f"  ratio to aiokafka {rate / base_rate:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
