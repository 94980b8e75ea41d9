"""Start-up of `engage worker` with many customers: `memory://` against `rocksdb://` (`make
bench-startup`).

Writes N customer states (default 1,000,000) straight to the customers changelog of a fresh app
id, as a worker would have left them: a few hundred realistic states are built in-process by
folding persona traffic (`engage emit`, 40 simulated days ending now) through the core's own
engine (`MemoryDriver`, every timer processed up to now, every decision acknowledged), then
cloned under N customer ids, each on the partition murmur2 gives its key (as the worker checks).
Then, for each store, it starts `python -m stream worker` and measures:

* ready: from starting the process to `/readyz` answering 200: table recovery, then every
  assigned partition's engine started (its due index rebuilt from the stored customers, each
  peeked at, a chunk at a time, and its unacknowledged decisions re-sent);
* first event: from /readyz 200 to `engage_events_processed_total` counting one click of an
  existing customer, produced by the bench right after ready (a producer already connected);
* index: from /readyz 200 to every partition's clock gauge set (0 when the engines start
  before ready, as they do with the default direct drain);
* RSS: the worker's resident memory (VmRSS) at ready, after the first event, after the rebuild.

`rocksdb://` runs twice: a first start with an empty data dir (it reads the whole changelog),
then a restart with the data dir kept (it reads only what was written since). The topics
created are deleted at the end (`--keep` keeps them).

    .venv/bin/python bench/startup.py --customers 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import persona_traffic  # noqa: E402

from schemas.events import TOPIC_SUFFIX  # noqa: E402
from stream.core.clock import clock_for  # noqa: E402
from stream.core.driver import MemoryDriver  # noqa: E402
from stream.core.engine import EngineConfig, Record  # noqa: E402
from stream.core.ingest import Limits  # noqa: E402
from stream.core.partitioning import murmur2  # noqa: E402
from stream.core.rules import load_rules  # noqa: E402
from stream.core.state import CustomerState, decode, encode  # noqa: E402
from stream.tools.processes import Worker, free_port, unique  # noqa: E402
from stream.topic_names import clock_topic, customers_changelog, input_topic, namespaced  # noqa: E402

PARTITIONS = 4
MIB = 1024 * 1024


def templates(customers: int, seed: int) -> list[CustomerState]:
    """Realistic states: persona traffic folded by the core, settled up to now."""
    now_ms = time.time_ns() // 1_000_000
    namespace = "tpl"
    inputs = {namespaced(namespace, suffix): suffix for suffix in TOPIC_SUFFIX.values()}
    control = clock_topic(namespace)
    config = EngineConfig(
        load_rules(), clock_for("replay"), inputs, control,
        Limits(max_future_skew=timedelta(days=1)), partitions=PARTITIONS,
    )  # fmt: skip
    offsets: dict[tuple[str, int], int] = {}
    records: list[Record] = []
    for suffix, key, value in persona_traffic(10**9, customers, seed):
        topic = namespaced(namespace, suffix)
        p = (murmur2(key) & 0x7FFFFFFF) % PARTITIONS
        offset = offsets.get((topic, p), 0)
        offsets[(topic, p)] = offset + 1
        records.append(Record(topic, p, offset, 0, key, value))
    # A replay declared first and ending now: the clock follows the traffic, and every timer
    # due by now has run when the states are taken (no burst of decisions at the bench's start).
    declarations = []
    for p in range(PARTITIONS):
        ends = {t: offsets.get((t, p), 0) for t in inputs}
        body = {"kind": "replay", "replay_id": "bench", "ends": ends, "final": now_ms}
        declarations.append(Record(control, p, 0, 0, None, json.dumps(body).encode()))
    driver = MemoryDriver(config)
    driver.pipe(declarations, wall_ms=now_ms)
    for i in range(0, len(records), 2000):
        driver.pipe(records[i : i + 2000], wall_ms=now_ms)
    driver.tick(range(PARTITIONS), wall_ms=now_ms)
    return [decode(raw) for raw in driver.customers.values()]


def clone(template: CustomerState, customer_id: str) -> tuple[bytes, bytes, int]:
    """(key, encoded state, partition) of a copy of `template` under another id."""
    key = customer_id.encode()
    partition = (murmur2(key) & 0x7FFFFFFF) % PARTITIONS
    state = msgspec.structs.replace(
        template, customer_id=customer_id, partition=partition, offsets={}
    )
    return key, encode(state), partition


async def write_changelog(
    bootstrap: str, topic: str, tpl: list[CustomerState], n: int, prefix: str
) -> int:
    """Produce n cloned states to the changelog; returns the bytes written (values)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1 << 20,
        max_request_size=4 << 20,
    )  # fmt: skip
    await producer.start()
    total = 0
    try:
        pending = []
        for i in range(n):
            key, value, partition = clone(tpl[i % len(tpl)], f"{prefix}-{i:07d}")
            total += len(value)
            pending.append(await producer.send(topic, value=value, key=key, partition=partition))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return total


def rss_mib(pid: int) -> float:
    """The process's resident memory (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Row:
    label: str
    ready_s: float
    first_s: float
    index_s: float
    rss_ready: float
    rss_first: float
    rss_index: float


def rebuilt(worker: Worker) -> bool:
    """Every partition's engine started (its clock gauge set)."""
    clocks = worker.metric("engage_partition_clock_seconds") > 0 and all(
        worker.metric("engage_partition_clock_seconds", partition=str(p)) > 0
        for p in range(PARTITIONS)
    )
    return clocks


async def measure(
    label: str, worker: Worker, producer: AIOKafkaProducer, customer: str, timeout: float
) -> Row:
    """Start the worker and time ready, first event and rebuilt index (see the module)."""
    started = time.perf_counter()
    log = worker.log_path.open("ab")
    worker.proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "worker"], cwd=ROOT, env=worker.env,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    pid = worker.proc.pid
    while not worker.ready():  # raises if the worker exits
        if time.perf_counter() - started > timeout:
            raise AssertionError(f"{label}: not ready after {timeout} s")
        await asyncio.sleep(0.05)
    ready = time.perf_counter()
    rss_ready = rss_mib(pid)
    before = worker.metric("engage_events_processed_total")
    evt = {
        "event_id": str(uuid.uuid4()), "customer_id": customer, "type": "click",
        "occurred_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "action": "page_view",
    }  # fmt: skip
    await producer.send_and_wait(
        input_topic(worker.namespace, "click"), value=json.dumps(evt).encode(),
        key=customer.encode(),
    )  # fmt: skip
    while worker.metric("engage_events_processed_total") <= before:
        if time.perf_counter() - ready > timeout:
            raise AssertionError(f"{label}: first event not processed after {timeout} s")
        await asyncio.sleep(0.02)
    first = time.perf_counter()
    rss_first = rss_mib(pid)
    while not rebuilt(worker):
        if time.perf_counter() - ready > timeout:
            raise AssertionError(f"{label}: due index not rebuilt after {timeout} s")
        await asyncio.sleep(0.1)
    index = time.perf_counter()
    return Row(label, ready - started, first - ready, index - ready, rss_ready, rss_first,
               rss_mib(pid))  # fmt: skip


async def delete_topics(bootstrap: str, prefixes: tuple[str, ...]) -> list[str]:
    """Delete every topic whose name starts with one of `prefixes` (the bench's own)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefixes)]
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()


async def run(args: argparse.Namespace, bootstrap: str, tmp: Path) -> list[Row]:
    from stream.adapter.topics import ensure_topics
    from stream.settings import Settings

    app_id, namespace = unique("bench-startup"), unique("bstart")
    settings = Settings(
        broker=f"kafka://{bootstrap}", app_id=app_id, topic_namespace=namespace,
        partitions=PARTITIONS,
    )  # fmt: skip
    try:
        t = time.perf_counter()
        tpl = templates(args.template_customers, args.seed)
        await ensure_topics(settings)
        size = await write_changelog(
            bootstrap, customers_changelog(app_id), tpl, args.customers, "su"
        )
        print(f"{args.customers:,} customer states ({size / args.customers:,.0f} bytes each on "
              f"average, {size / MIB:,.0f} MiB), cloned from {len(tpl)} persona states, "
              f"written to the changelog in {time.perf_counter() - t:.0f} s; "
              f"{PARTITIONS} partitions", flush=True)  # fmt: skip
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        rows: list[Row] = []
        try:
            runs = []
            if "memory" in args.stores:
                runs.append(("memory://", "memory://", "data-memory", False))
            if "rocksdb" in args.stores:
                runs.append(("rocksdb://, first start (empty data dir)", "rocksdb://",
                             "data-rocksdb", True))  # fmt: skip
                runs.append(("rocksdb://, restart (data dir kept)", "rocksdb://",
                             "data-rocksdb", False))  # fmt: skip
            for i, (label, store, data, fresh) in enumerate(runs):
                data_dir = tmp / data
                if fresh:
                    shutil.rmtree(data_dir, ignore_errors=True)
                worker = Worker(
                    bootstrap=bootstrap, app_id=app_id, namespace=namespace,
                    log_path=tmp / f"worker-{i}.log", partitions=PARTITIONS,
                    web_port=free_port(),
                    extra_env={"ENGAGE_STORE": store, "ENGAGE_DATA_DIR": str(data_dir)},
                )  # fmt: skip
                try:
                    customer = f"su-{(i * 7919 + 42) % args.customers:07d}"
                    rows.append(await measure(label, worker, producer, customer, args.timeout))
                    print(fmt(rows[-1]), flush=True)
                finally:
                    worker.stop(timeout=60)
        finally:
            await producer.stop()
        return rows
    finally:
        if not args.keep:
            gone = await delete_topics(bootstrap, (app_id, f"{namespace}."))
            print(f"deleted {len(gone)} topics of {app_id} / {namespace}")


COLUMNS = ("ready", "first event", "index rebuilt", "RSS ready", "RSS 1st event", "RSS rebuilt")
HEADER = "\n".join([
    f"| {'store':42} | " + " | ".join(f"{c:>13}" for c in COLUMNS) + " |",
    f"|{'-' * 44}|" + "|".join("-" * 14 + ":" for _ in COLUMNS) + "|",
])  # fmt: skip


def fmt(row: Row) -> str:
    cells = [f"{row.ready_s:.1f} s", f"{row.first_s:.2f} s", f"{row.index_s:.1f} s",
             *(f"{m:,.0f} MiB" for m in (row.rss_ready, row.rss_first, row.rss_index))]  # fmt: skip
    return f"| {row.label:42} | " + " | ".join(f"{c:>13}" for c in cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--stores", default="memory,rocksdb",
                        help="comma-separated: memory, rocksdb")  # fmt: skip
    parser.add_argument("--template-customers", type=int, default=300,
                        help="persona customers folded to make the states cloned")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per phase, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the topics created")
    parser.add_argument("--bootstrap", help="an existing broker; default: the local stack")
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # leader elections of new topics
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        from stream.tools.devstack import ensure_up

        bootstrap = ensure_up(("kafka", "redis"))["kafka"]
    with tempfile.TemporaryDirectory(prefix="engage-startup-") as tmpdir:
        tmp = Path(os.environ.get("BENCH_LOGS") or tmpdir)  # BENCH_LOGS: keep the logs
        tmp.mkdir(parents=True, exist_ok=True)
        rows = asyncio.run(run(args, bootstrap, tmp))
    print()
    print(f"Start-up with {args.customers:,} customers, {PARTITIONS} partitions "
          "(first event and index rebuilt are counted from ready):")  # fmt: skip
    print(HEADER)
    for row in rows:
        print(fmt(row))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
