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
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.events import TOPIC_SUFFIX  # noqa: E402
from stream.kafka_client import consumer as kafka_consumer  # noqa: E402
from stream.settings import Settings  # noqa: E402
from tests.harness import Worker, produce, unique, wait_for  # noqa: E402


def persona_traffic(n: int, customers: int, seed: int) -> list[tuple[str, bytes, bytes]]:
    """(topic suffix, key, value) of the first n events of a seeded `engage emit --out` run
    whose simulated days end now: the same persona traffic the demo produces."""
    days = 40
    start = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        subprocess.run(
            [sys.executable, "-m", "stream", "emit", "--customers", str(customers),
             "--days", str(days), "--start", start, "--seed", str(seed), "--out", str(path),
             "--quiet"],
            check=True, cwd=ROOT,
        )  # fmt: skip
        lines = path.read_bytes().splitlines()[:n]
    out = []
    for line in lines:
        evt = json.loads(line)
        out.append((TOPIC_SUFFIX[evt["type"]], evt["customer_id"].encode(), line))
    return out


async def baseline(bootstrap: str, topics: list[str], n: int) -> float:
    """Seconds for a bare aiokafka loop to consume and JSON-decode all n messages."""
    consumer = kafka_consumer(
        Settings(broker=f"kafka://{bootstrap}"),  # security settings from ENGAGE_* (one home)
        *topics,
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


def run_worker(
    bootstrap: str, namespace: str, n: int, guarantee: str, logdir: Path
) -> tuple[float, float]:
    """Seconds from the worker's first processed event to its n-th, and decisions taken."""
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
        secs = time.perf_counter() - first
        return secs, worker.metric("engage_ritual_decisions_total")
    finally:
        worker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--guarantees", default="at_least_once,exactly_once", help="comma-separated modes"
    )
    parser.add_argument("--bootstrap", help="an existing broker; default: the local stack")
    args = parser.parse_args()

    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        from stream.tools.devstack import ensure_up

        bootstrap = ensure_up(("kafka",))["kafka"]
    namespace = unique("bench")
    messages = persona_traffic(args.events, args.customers, args.seed)
    topics = sorted({f"{namespace}.{suffix}" for suffix in TOPIC_SUFFIX.values()})

    from stream.adapter.topics import ensure_topics
    from stream.settings import Settings

    asyncio.run(
        ensure_topics(
            Settings(broker=f"kafka://{bootstrap}", topic_namespace=namespace, partitions=4)
        )
    )
    t0 = time.perf_counter()
    produce(bootstrap, [(f"{namespace}.{s}", k, v) for s, k, v in messages])
    produce_s = time.perf_counter() - t0
    print(f"produced {args.events} events to {len(topics)} topics in {produce_s:.1f} s")

    base_s = asyncio.run(baseline(bootstrap, topics, args.events))
    base_rate = args.events / base_s
    print(f"aiokafka consume+decode   {base_rate:>10,.0f} events/s  ({base_s:.2f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        for guarantee in args.guarantees.split(","):
            secs, decisions = run_worker(bootstrap, namespace, args.events, guarantee, Path(tmp))
            rate = args.events / secs
            print(
                f"engage worker {guarantee:<13} {rate:>8,.0f} events/s  ({secs:.2f} s)"
                f"  ratio to aiokafka {rate / base_rate:.3f}  ({decisions:.0f} decisions)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
