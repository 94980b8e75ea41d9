"""Throughput of `engage worker` next to its references, in one run on the same data (`make bench`).

Produces N persona events (the demo's traffic) across the six input topics of a fresh
namespace, then measures, each from its first event to its N-th:

1. a bare aiokafka consume + `json.loads` loop (what Python can read),
2. a bare Faust agent doing nothing (Faust's per-message ceiling),
3. a bare Faust agent writing one table key per event,
4. Quix Streams running the engage core per key (`bench/quix_engage.py`, in its own virtualenv
   `.venv-bench`: Quix Streams is a bench-only dependency whose pins conflict with the
   product's),
5. `engage worker` (at_least_once, the only processing guarantee),
6. the same engines over a raw aiokafka consume, produce, flush and commit loop without Faust
   (`bench/raw_engage.py`): the ceiling of the worker's design in Python (`--raw-overlap`
   adds the same loop with each batch's flush and commit overlapped with the next batch),
7. `engage worker` at_least_once from the last commit before the commit protocol
   (`--reference`, a git worktree of that commit, made for the run and removed after; another
   commit, such as df094f4, the last with rituals written in Python, for another comparison),
   so what a change did to the worker is a ratio measured side by side,

and prints events/s, the ratios to the bare no-op agent and to the raw engines row, and the CPU
time per event, then the worker's ratios next to their goals (>= 2.0 x the bare no-op agent,
>= 0.8 of the raw row). Then, on a fresh live worker fed at half the at_least_once row's rate,
the p50/p99 latency from sending a first purchase to its welcome decision on the decisions
topic, next to its goal (p99 < 100 ms), after a warm-up of the same traffic (reported apart);
and the serialized bytes per customer in the changelog.

    .venv/bin/python bench/throughput.py --events 30000 --customers 400
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import baseline, persona_traffic  # noqa: E402

from schemas.events import TOPIC_SUFFIX  # noqa: E402
from stream.tools.processes import Worker, free_port, produce, table_state, unique, wait_for  # noqa: E402
from stream.topic_names import (  # noqa: E402
    customers_changelog,
    decisions_topic,
    input_topic,
    namespaced,
)

PARTITIONS = 4
#: The row of the engage engines over a raw aiokafka loop (`bench/raw_engage.py`).
RAW_ROW = "engage engines, raw aiokafka loop (no Faust)"
RAW_OVERLAP_ROW = "engage engines, raw aiokafka loop, flush overlapped"
#: The goals of the worker's throughput and latency (same run, same data).
GOAL_TO_BARE, GOAL_TO_RAW, GOAL_P99_MS = 2.0, 0.8, 100
#: The last commit with the seven rituals written in Python (before rituals became data).
REFERENCE_COMMIT = "5014209"  # the last commit before the commit protocol (stream/core/commit.py)
#: The interpreter of the bench-only virtualenv with Quix Streams (`make bench` builds it).
BENCH_PYTHON = Path(os.environ.get("ENGAGE_BENCH_PYTHON") or ROOT / ".venv-bench/bin/python")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(text: str) -> tuple[float, float | None]:
    """A subprocess row's result file: seconds, then (if given) its CPU seconds."""
    secs, _, cpu = text.partition(" ")
    return float(secs), float(cpu) if cpu else None


def run_bare(
    mode: str, bootstrap: str, namespace: str, n: int, tmp: Path
) -> tuple[float, float | None]:
    """Seconds for a bare Faust agent (`noop` or `table`) from its first event to its n-th,
    and the CPU seconds it used meanwhile."""
    app_id = unique(f"bench-bare-{mode}")
    result = tmp / f"{app_id}.txt"
    log = (tmp / f"{app_id}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "faust_bare.py"), mode, app_id, namespace,
         str(n), str(PARTITIONS), str(result), str(free_port())],
        cwd=ROOT, env={**os.environ, "ENGAGE_BROKER": f"kafka://{bootstrap}"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        text = wait_for(
            lambda: result.exists() and result.read_text(), timeout=900, what=f"bare {mode}"
        )
        return timed(text)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def run_quix(bootstrap: str, namespace: str, n: int, tmp: Path) -> float:
    """Seconds for Quix Streams running the engage core per key from its first event to its
    n-th (`bench/quix_engage.py`, run by the bench virtualenv's interpreter)."""
    app_id = unique("bench-quix")
    result = tmp / f"{app_id}.txt"
    log = (tmp / f"{app_id}.log").open("ab")
    proc = subprocess.Popen(
        [str(BENCH_PYTHON), str(ROOT / "bench" / "quix_engage.py"), bootstrap, app_id, namespace,
         str(n), str(PARTITIONS), str(result), str(tmp / f"{app_id}-state")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        text = wait_for(
            lambda: result.exists() and result.read_text(), timeout=900, what="quix engage"
        )
        return float(text)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def run_raw(
    bootstrap: str, namespace: str, n: int, tmp: Path, *, overlap: bool
) -> tuple[float, float | None]:
    """Seconds for the engage engines over a raw aiokafka consume-and-produce loop, no Faust
    (`bench/raw_engage.py`), from its first fetch to the commit of its n-th event, and the CPU
    seconds it used meanwhile; with `overlap` each batch's flush and commit run while the next
    batch is processed."""
    app_id = unique("bench-raw")
    result = tmp / f"{app_id}.txt"
    log = (tmp / f"{app_id}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "raw_engage.py"), bootstrap, app_id, namespace,
         str(n), str(PARTITIONS), str(result), "overlap" if overlap else "serial"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        text = wait_for(
            lambda: result.exists() and result.read_text(), timeout=900, what="raw engines"
        )
        return timed(text)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def run_engage(
    bootstrap: str, namespace: str, n: int, guarantee: str, tmp: Path, root: Path = ROOT
) -> tuple[float, float, str]:
    """Seconds the worker takes for n events, its CPU seconds for them, and its app id. Timed
    from the first scrape that counts a processed event to the one that counts n, and scaled
    to n from the events counted in between: the worker may finish a large first batch before
    a scrape sees it, and those events must not count as processed in no time. The CPU time
    is read from /proc at the same two moments and scaled the same way."""
    app_id = unique(f"bench-{guarantee}")
    worker = Worker(
        bootstrap=bootstrap,
        app_id=app_id,
        namespace=namespace,
        log_path=tmp / f"{app_id}.log",
        partitions=PARTITIONS,
        extra_env={
            "ENGAGE_PROCESSING_GUARANTEE": guarantee,
            "ENGAGE_LOG_LEVEL": "warning",
            "ENGAGE_REDIS_ENABLED": "false",
        },
        root=root,
    )
    worker.start(timeout=120)
    try:
        assert worker.proc is not None
        pid = worker.proc.pid
        first_count, first, first_cpu = wait_for(
            lambda: (
                (c := worker.metric("engage_events_processed_total")) > 0
                and (c, time.perf_counter(), cpu_seconds(pid))
            ),
            timeout=120,
            interval=0.05,
            what="first event",
        )
        last_count, last, last_cpu = wait_for(
            lambda: (
                (c := worker.metric("engage_events_processed_total")) >= n
                and (c, time.perf_counter(), cpu_seconds(pid))
            ),
            timeout=900,
            interval=0.25,  # a scrape costs the worker CPU: poll gently
            what=f"{n} events processed",
        )
        scale = n / (last_count - first_count)
        return (last - first) * scale, (last_cpu - first_cpu) * scale, app_id
    finally:
        worker.stop()


@dataclass(frozen=True, slots=True)
class Sample:
    """One first purchase: when it was sent (seconds after the first send), the seconds to its
    welcome decision being readable, and the seconds to the worker producing it (the decision
    record's timestamp, set by the worker's producer, minus the send's wall-clock time).
    `sent_s` is negative for the warm-up's purchases."""

    sent_s: float
    latency_s: float
    produced_s: float
    warm_up: bool = False  # sent during the warm-up (reported apart)


async def _read_decisions(
    consumer: AIOKafkaConsumer, seen: dict[str, tuple[float, float]], stop: asyncio.Event
) -> None:
    """Read the decisions topic, stamping each welcome decision when its fetch arrives."""
    while not stop.is_set():
        batch = await consumer.getmany(timeout_ms=50)
        now = time.perf_counter()
        for msgs in batch.values():
            for msg in msgs:
                record = json.loads(msg.value)
                if record["ritual"] == "post_purchase_welcome":
                    seen.setdefault(record["customer_id"], (now, msg.timestamp / 1000))


def _reader_process(
    bootstrap: str, decisions: str, group: str, ready: Any, stop: Any, expected: Any, out: Any
) -> None:
    """The measuring client's reader, in its own process: the sender's bursts (about 40 sends
    every 10 ms) no longer delay the moment a decision is seen. Sends back {customer: (perf
    time readable, producer timestamp)}; perf_counter is the same clock in both processes."""

    async def run() -> dict[str, tuple[float, float]]:
        consumer = AIOKafkaConsumer(
            decisions, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=group, fetch_max_wait_ms=100,
        )  # fmt: skip
        await consumer.start()
        seen: dict[str, tuple[float, float]] = {}
        done = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():  # set once the sends are over and counted (`expected`)
                await asyncio.sleep(0.05)
            deadline = time.perf_counter() + 30
            while len(seen) < expected.value and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            done.set()

        try:
            await consumer.getmany(timeout_ms=100)  # joined and positioned before the sends
            ready.set()
            watcher = asyncio.create_task(watch())
            await _read_decisions(consumer, seen, done)
            await watcher
        finally:
            await consumer.stop()
        return seen

    out.put(asyncio.run(run()))


def _afternoon_zone() -> str:
    """A fixed-offset zone where it is early afternoon now: the welcome decisions must not
    wait out quiet hours (21:00-08:00 local; UTC by default), or only the held-out ones
    (decided before the quiet hours step) would be readable during the measurement."""
    offset = (13 - datetime.now(UTC).hour + 12) % 24 - 12  # UTC+offset, in -12..11
    # the Etc zones' signs are inverted (POSIX): Etc/GMT-2 is UTC+2
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


#: Seconds of traffic before the measured window (the worker's first seconds: connections,
#: metadata, first fetches) and after it (the partition clock passes an event only once a
#: later one is read, or a grace period later when input stops: SPEC §2).
WARM_UP_S = 3.0
TAIL_S = 2.0


async def _latency(
    bootstrap: str,
    namespace: str,
    rate: float,
    seconds: float,
    *,
    in_process: bool = False,
    pid: int | None = None,
    background: list[tuple[str, bytes, bytes]] | None = None,
) -> tuple[list[Sample], float | None]:
    """Send live traffic at `rate` events/s. With `background` (the throughput rows' persona
    events), every `PERSONA_PROBE_EVERY`th event is a new customer's first purchase (a probe)
    and the others are the persona events in turn, sent as happening now (`live_persona`);
    without, every 10th is a probe and the others clicks of 400 customers.
    Returns, per such send, its send time and the seconds to its welcome decision being
    readable (read by a separate process unless `in_process`, the old measuring client),
    and the CPU time process `pid` (the worker) used per second of the measured window.
    The traffic runs `WARM_UP_S` before the `seconds` measured and `TAIL_S` after; the
    warm-up's purchases are returned marked, the tail sends only clicks."""
    import multiprocessing

    decisions = decisions_topic(namespace)
    group = unique("bench-latency")
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out, expected = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Value("i", 0)
    reader_proc = None
    seen: dict[str, tuple[float, float]] = {}
    local_stop = asyncio.Event()
    reader: asyncio.Task[None] | None = None
    consumer = None
    if in_process:
        consumer = AIOKafkaConsumer(
            decisions, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=group,
        )  # fmt: skip
        await consumer.start()
        reader = asyncio.create_task(_read_decisions(consumer, seen, local_stop))
    else:
        reader_proc = ctx.Process(
            target=_reader_process, args=(bootstrap, decisions, group, ready, stop, expected, out)
        )
        reader_proc.start()
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, 60)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    sent: dict[str, tuple[float, float]] = {}  # customer -> (perf time, wall time) of the send
    try:
        tick, i, b = 0.01, 0, 0
        tz = _afternoon_zone()
        every = PERSONA_PROBE_EVERY if background else 10
        begun = time.perf_counter()
        started = begun + WARM_UP_S  # the measured window's start
        warm: set[str] = set()
        cpu: dict[str, tuple[float, float]] = {}  # window start/end -> (perf time, CPU s)
        while (elapsed := time.perf_counter() - begun) < WARM_UP_S + seconds + TAIL_S:
            due = int(elapsed * rate)
            sampling = elapsed < WARM_UP_S + seconds
            if pid is not None:
                if "start" not in cpu and elapsed >= WARM_UP_S:
                    cpu["start"] = (time.perf_counter(), cpu_seconds(pid))
                if "end" not in cpu and not sampling:
                    cpu["end"] = (time.perf_counter(), cpu_seconds(pid))
            while i < due:
                now_iso = datetime.now(UTC).isoformat(timespec="milliseconds")
                if background and not (i % every == 0 and sampling):
                    topic, key, value = live_persona(background, b, now_iso, namespace)
                    b += 1
                    await producer.send(topic, key=key, value=value)
                    i += 1
                    continue
                if i % every == 0 and sampling:
                    cid = f"lat-{uuid.uuid4().hex[:10]}"
                    evt = {"type": "purchase", "order_id": f"o-{i}", "amount": "9.90",
                           "currency": "EUR", "items": 1}  # fmt: skip
                    sent[cid] = (time.perf_counter(), time.time())
                    if elapsed < WARM_UP_S:
                        warm.add(cid)
                else:
                    cid = f"lat-bg-{i % 400}"
                    evt = {"type": "click", "action": "page_view"}
                evt.update(event_id=str(uuid.uuid4()), customer_id=cid, occurred_at=now_iso, tz=tz)
                topic = input_topic(namespace, evt["type"])
                await producer.send(topic, key=cid.encode(), value=json.dumps(evt).encode())
                i += 1
            await asyncio.sleep(tick)
        await producer.flush()
        took = time.perf_counter() - begun
        print(f"latency feed: {i:,} events sent in {took:.1f} s ({i / took:,.0f}/s), "
              f"{len(sent):,} of them first purchases ({len(warm):,} in the warm-up)")  # fmt: skip
        deadline = time.perf_counter() + 30
        if reader is not None:
            while len(seen) < len(sent) and time.perf_counter() < deadline:
                await asyncio.sleep(0.1)
            local_stop.set()
            await reader
        else:
            expected.value = len(sent)
            stop.set()
            seen = await asyncio.get_running_loop().run_in_executor(None, out.get, True, 60)
    finally:
        await producer.stop()
        if consumer is not None:
            await consumer.stop()
        if reader_proc is not None:
            stop.set()
            reader_proc.join(timeout=30)
    samples = sorted(
        (Sample(t - started, seen[c][0] - t, seen[c][1] - wall, c in warm)
         for c, (t, wall) in sent.items() if c in seen),
        key=lambda s: s.sent_s,
    )  # fmt: skip
    share = None
    if "start" in cpu and "end" in cpu:
        (t0, c0), (t1, c1) = cpu["start"], cpu["end"]
        share = (c1 - c0) / (t1 - t0)
    return samples, share


#: With the persona mix, one event in this many is a probe (a new customer's first purchase).
PERSONA_PROBE_EVERY = 50


def live_persona(
    events: list[tuple[str, bytes, bytes]], i: int, now_iso: str, namespace: str
) -> tuple[str, bytes, bytes]:
    """The `i`th background event of the persona mix: the persona events in turn, each as
    happening now (`occurred_at`); after the first pass, each pass's customers and event ids
    carry the pass number, so every event is new to the worker."""
    suffix, _, value = events[i % len(events)]
    evt = json.loads(value)
    n = i // len(events)
    if n:
        evt["customer_id"] = f"{evt['customer_id']}~{n}"
        evt["event_id"] = f"{evt['event_id']}~{n}"
    evt["occurred_at"] = now_iso
    return namespaced(namespace, suffix), evt["customer_id"].encode(), json.dumps(evt).encode()


def measure_latency(
    bootstrap: str,
    rate: float,
    tmp: Path,
    seconds: float,
    *,
    in_process: bool = False,
    background: list[tuple[str, bytes, bytes]] | None = None,
) -> tuple[list[Sample], float | None]:
    """A fresh live worker fed at `rate` (with `background`: the persona mix, see `_latency`):
    first purchase -> welcome decision, per purchase, and the worker's CPU seconds per second
    of the measured window (cores in use)."""
    from stream.adapter.topics import ensure_topics
    from stream.settings import Settings

    namespace = unique("bench-lat")
    asyncio.run(
        ensure_topics(
            Settings(
                broker=f"kafka://{bootstrap}", topic_namespace=namespace, partitions=PARTITIONS
            )
        )
    )
    worker = Worker(
        bootstrap=bootstrap, app_id=namespace, namespace=namespace,
        log_path=tmp / f"{namespace}.log", partitions=PARTITIONS,
        extra_env={"ENGAGE_LOG_LEVEL": "warning", "ENGAGE_REDIS_ENABLED": "false"},
    )  # fmt: skip
    worker.start(timeout=120)
    try:
        assert worker.proc is not None
        return asyncio.run(
            _latency(
                bootstrap,
                namespace,
                rate,
                seconds,
                in_process=in_process,
                pid=worker.proc.pid,
                background=background,
            )
        )
    finally:
        worker.stop()


def report_latency(
    samples: list[Sample], rate: float, where: str, path: str | None, cores: float | None = None
) -> None:
    """Print the latency percentiles, the worker's CPU use in the measured window (`cores`:
    CPU seconds per second), when the slow samples were sent, and (with `path`) write every
    sample as CSV: sent_s, latency_ms, produced_ms (the warm-up's included, with negative
    send times). The percentiles are the measured window's; the warm-up's own line follows."""
    every = samples
    warm = sorted(s.latency_s for s in every if s.warm_up)
    samples = [s for s in every if not s.warm_up]
    lat = sorted(s.latency_s for s in samples)
    produced = sorted(s.produced_s for s in samples)
    p99 = pct(lat, 0.99) * 1000
    verdict = "met" if p99 < GOAL_P99_MS else "not met"
    print(
        f"\nevent-to-decision latency at {rate:,.0f} events/s ({where}), {len(lat)} first "
        f"purchases: p50 {pct(lat, 0.5) * 1000:.0f} ms, p95 {pct(lat, 0.95) * 1000:.0f} ms, "
        f"p99 {p99:.0f} ms, max {lat[-1] * 1000 if lat else float('nan'):.0f} ms (goal p99 < "
        f"{GOAL_P99_MS} ms: {verdict}); to the worker's producer timestamp: p50 "
        f"{pct(produced, 0.5) * 1000:.0f} ms, p99 {pct(produced, 0.99) * 1000:.0f} ms"
    )
    if cores is not None:
        print(
            f"the worker's CPU in the measured window: {cores:.2f} of a core, "
            f"{cores / rate * 1e6:.0f} µs per event (its main thread runs the engines: near one "
            f"core, batches queue and the tail grows)"
        )
    if warm:
        print(
            f"warm-up ({WARM_UP_S:.0f} s of the same traffic from the worker's start, "
            f"{len(warm)} first purchases, not counted above): p50 {pct(warm, 0.5) * 1000:.0f} "
            f"ms, p99 {pct(warm, 0.99) * 1000:.0f} ms, max {warm[-1] * 1000:.0f} ms"
        )
    if lat:
        slow = pct(lat, 0.99)
        worst = [s for s in samples if s.latency_s >= slow]
        print("slowest 1%, by send time (s after the first send: ms): " + ", ".join(
            f"{s.sent_s:.2f}: {s.latency_s * 1000:.0f}" for s in worst))  # fmt: skip
        seconds = int(samples[-1].sent_s) + 1
        per_second = []
        for sec in range(seconds):
            window = sorted(s.latency_s for s in samples if sec <= s.sent_s < sec + 1)
            if window:
                per_second.append(f"{sec}s:{pct(window, 0.5) * 1000:.0f}/{window[-1] * 1000:.0f}")
        print("per second of sending, p50/max ms: " + " ".join(per_second))
    if path:
        with open(path, "w") as f:
            f.write("sent_s,latency_ms,produced_ms\n")
            for s in every:
                f.write(f"{s.sent_s:.4f},{s.latency_s * 1000:.2f},{s.produced_s * 1000:.1f}\n")


def pct(values: list[float], q: float) -> float:
    """The q-quantile of sorted values (nan when empty)."""
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--skip", default="", help="comma-separated rows to skip: "
                        "aiokafka,noop,table,quix,at_least_once,raw,"
                        "reference,latency")  # fmt: skip
    parser.add_argument("--reference", default=REFERENCE_COMMIT,
                        help="the commit of the reference worker row (default: the last "
                        "before the commit protocol)")  # fmt: skip
    parser.add_argument("--raw-overlap", action="store_true",
                        help="also run the raw engines loop with each batch's flush and commit "
                        "overlapped with the next batch")  # fmt: skip
    parser.add_argument("--latency-rate", type=float,
                        help="feed the latency measurement at this many events/s (default: half "
                        "the at_least_once row's rate; needed when it is skipped)")  # fmt: skip
    parser.add_argument("--latency-mix", choices=("persona", "probes"), default="persona",
                        help="the latency feed: the persona events sent as happening now, one "
                        f"in {PERSONA_PROBE_EVERY} a new customer's first purchase (the same "
                        "data as the rows, default), or `probes`: one in 10 a first "
                        "purchase, the rest clicks of 400 customers (decision-heavy)")  # fmt: skip
    parser.add_argument("--latency-samples", help="write every latency sample to this CSV file")
    parser.add_argument("--latency-in-process", action="store_true",
                        help="read the decisions in the sender's event loop (the old measuring "
                        "client, whose bursts of sends delayed the reads)")  # fmt: skip
    parser.add_argument("--catch-up", action="store_true",
                        help="the oldest N events of the 40 simulated days instead of the most "
                        "recent N: a live worker catching up, deciding an expired we_noticed "
                        "for about one event in three")  # fmt: skip
    parser.add_argument("--bootstrap", help="an existing broker; default: the local stack")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        from stream.tools.devstack import ensure_up

        bootstrap = ensure_up(("kafka",))["kafka"]
    from stream.adapter.topics import ensure_topics
    from stream.settings import Settings

    namespace = unique("bench")
    messages = persona_traffic(args.events, args.customers, args.seed, recent=not args.catch_up)
    n = len(messages)
    topics = sorted({namespaced(namespace, suffix) for suffix in TOPIC_SUFFIX.values()})
    asyncio.run(
        ensure_topics(
            Settings(
                broker=f"kafka://{bootstrap}", topic_namespace=namespace, partitions=PARTITIONS
            )
        )
    )
    produce(bootstrap, [(f"{namespace}.{s}", k, v) for s, k, v in messages])
    span = "the oldest (catch-up)" if args.catch_up else "the most recent"
    print(f"{n} persona events ({args.customers} customers, {span} of 40 days ending now), "
          f"{PARTITIONS} partitions")  # fmt: skip

    rows: list[tuple[str, float]] = []
    cpu: dict[str, float] = {}  # row -> CPU seconds of its n events, where measured
    app_ids: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(os.environ.get("BENCH_LOGS") or tmpdir)  # BENCH_LOGS: keep the workers' logs
        tmp.mkdir(parents=True, exist_ok=True)
        if "aiokafka" not in skip:
            rows.append(("aiokafka consume + json.loads", n / asyncio.run(
                baseline(bootstrap, topics, n))))  # fmt: skip
        for mode, label in (("noop", "bare Faust agent, no-op"),
                            ("table", "bare Faust agent, 1 table write/event")):  # fmt: skip
            if mode not in skip:
                secs, cpu_s = run_bare(mode, bootstrap, namespace, n, tmp)
                rows.append((label, n / secs))
                if cpu_s is not None:
                    cpu[label] = cpu_s
        if "quix" not in skip:
            if BENCH_PYTHON.exists():
                secs = run_quix(bootstrap, namespace, n, tmp)
                rows.append(("Quix Streams, engage core per key", n / secs))
            else:
                print(f"skipping the Quix Streams row: no {BENCH_PYTHON} (`make bench` makes it)")
        if "at_least_once" not in skip:
            secs, cpu_s, app_ids["at_least_once"] = run_engage(
                bootstrap, namespace, n, "at_least_once", tmp
            )
            rows.append(("engage worker at_least_once", n / secs))
            cpu["engage worker at_least_once"] = cpu_s
        raw_rows = [("raw", RAW_ROW, False)]
        if args.raw_overlap:
            raw_rows.append(("raw-overlap", RAW_OVERLAP_ROW, True))
        for key, label, overlap in raw_rows:
            if key not in skip:
                secs, cpu_s = run_raw(bootstrap, namespace, n, tmp, overlap=overlap)
                rows.append((label, n / secs))
                if cpu_s is not None:
                    cpu[label] = cpu_s
        if "reference" not in skip:
            tree = tmp / "reference-tree"
            made = subprocess.run(
                ["git", "worktree", "add", "--detach", "-f", str(tree), args.reference],
                cwd=ROOT, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if made.returncode == 0:
                try:
                    secs, cpu_s, _ = run_engage(bootstrap, namespace, n, "at_least_once", tmp, tree)
                    label = f"engage worker at_least_once at {args.reference}"
                    rows.append((label, n / secs))
                    cpu[label] = cpu_s
                finally:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)],
                                   cwd=ROOT, check=False)  # fmt: skip
            else:
                print(f"skipping the reference row: {made.stderr.strip()}")
        bare = dict(rows).get("bare Faust agent, no-op")
        raw = dict(rows).get(RAW_ROW)
        print("\n| loop | events/s | ratio to bare no-op agent | ratio to raw engines row "
              "| CPU µs/event |\n|---|---:|---:|---:|---:|")  # fmt: skip
        for label, rate in rows:
            to_bare = f"{rate / bare:.2f}" if bare else "n/a"
            to_raw = f"{rate / raw:.2f}" if raw else "n/a"
            per = f"{cpu[label] / n * 1e6:.0f}" if label in cpu else "n/a"
            print(f"| {label} | {rate:,.0f} | {to_bare} | {to_raw} | {per} |")
        ours = dict(rows).get("engage worker at_least_once")
        if ours and bare and raw:
            print(f"\nengage worker at_least_once: {ours / bare:.2f} x the bare no-op agent "
                  f"(goal >= {GOAL_TO_BARE}), {ours / raw:.2f} of the raw engines row "
                  f"(goal >= {GOAL_TO_RAW}), same data, same run")  # fmt: skip
        before = dict(rows).get(f"engage worker at_least_once at {args.reference}")
        if ours and before:
            print(f"\nengage worker at_least_once: {ours / before:.2f} of the worker at "
                  f"{args.reference} (--reference), same data, same run")  # fmt: skip

        if "at_least_once" in app_ids:
            states = table_state(bootstrap, customers_changelog(app_ids["at_least_once"]))
            from stream.core.state import encode

            sizes = sorted(len(encode(s)) for s in states.values())
            print(
                f"\nserialized bytes per customer ({len(sizes)} customers): "
                f"mean {statistics.mean(sizes):,.0f}, p50 {pct(sizes, 0.5):,}, "
                f"p95 {pct(sizes, 0.95):,}, max {sizes[-1]:,}"
            )
        rate = dict(rows).get("engage worker at_least_once")
        if "latency" not in skip:
            if args.latency_rate:
                feed, where = args.latency_rate, "--latency-rate"
            elif rate is not None:
                feed, where = rate / 2, f"half the at_least_once row's {rate:,.0f}"
            else:
                feed = None
                print("\nno latency measurement: it runs at half the at_least_once row's rate "
                      "(or --latency-rate), and that row was skipped")  # fmt: skip
            if feed is not None:
                background = messages if args.latency_mix == "persona" else None
                samples, cores = measure_latency(
                    bootstrap, feed, tmp, args.latency_seconds,
                    in_process=args.latency_in_process, background=background,
                )  # fmt: skip
                where += f", {args.latency_mix} mix"
                report_latency(samples, feed, where, args.latency_samples, cores)
                print("(a live decision waits for the partition clock, the wall clock minus "
                      "ENGAGE_GRACE_MS, 1000 ms by default, only for timed rituals)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
