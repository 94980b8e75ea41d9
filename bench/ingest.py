"""What the benchmarks share: persona traffic as Kafka messages, and the bare aiokafka loop.

`persona_traffic` is the demo's traffic as (topic suffix, key, value) messages; `baseline` times a
bare aiokafka consume-and-decode loop (`json.loads` per message), the ceiling of what Python can
read. `bench/throughput.py` (`make bench`) runs them next to the workers.
"""

from __future__ import annotations

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
from stream.tools.processes import unique  # noqa: E402


def persona_traffic(
    n: int, customers: int, seed: int, *, recent: bool = False
) -> list[tuple[str, bytes, bytes]]:
    """(topic suffix, key, value) of n events of a seeded `engage emit --out` run whose 40
    simulated days end now: the same persona traffic the demo produces.

    `recent`: the last n events, those closest to now, as a live worker reads them (with the
    default 400 customers, 30,000 events span the last 29 days: no inactivity spell of 30
    days has ended). Otherwise the first n, the oldest: to a live worker, a catch-up after
    an outage, in which every event more than 30 days old ends its customer's inactivity
    spell at once (about one `we_noticed` decision, `expired`, per three events)."""
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
        lines = path.read_bytes().splitlines()
        lines = lines[-n:] if recent else lines[:n]
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
