"""Scale-out of `engage worker`: throughput with 1, 2 and 4 workers, and rebalance settle times
(`make bench-scale`).

1. **Throughput curve.** Produces N persona events (the demo's traffic, as `bench/throughput.py`)
   to the input topics of a fresh namespace with 16 partitions. For each worker count, starts
   that many workers at once under a fresh app id (a fresh consumer group over the same input
   topics, so every count reads the same data from the start) and measures, from the moment the
   group has settled (every worker ready, every partition owned by exactly one worker, read from
   the workers' /metrics) to the scrape that counts all N events processed: the total events/s,
   each worker's share, and the workers' CPU time per event (`process_cpu_seconds_total`).
2. **Rebalance under load.** In a namespace of its own fed with live persona traffic at a steady
   rate, a group of workers runs; one more worker joins, and later leaves (a clean shutdown).
   Each settle time runs from the join (the process is started) or the leave (SIGTERM) until
   every worker is ready, every partition is owned by exactly one worker, and every worker has
   processed events since: the group is whole and processing again.

The machine's load average is printed with the figures: on a shared machine they are only as
good as the cores were free.

    .venv/bin/python bench/scale.py --events 200000 --workers 1,2,4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import persona_traffic  # noqa: E402

from stream.settings import Settings  # noqa: E402
from stream.tools.processes import Worker, produce, unique, wait_for  # noqa: E402

PARTITIONS = 16
#: Settings of every worker the benchmark starts: no Redis (not what is measured), quiet logs.
WORKER_ENV = {"ENGAGE_LOG_LEVEL": "warning", "ENGAGE_REDIS_ENABLED": "false"}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


# --- pure helpers (tested without a broker) ----------------------------------------------------


def parse_counts(text: str, partitions: int) -> list[int]:
    """The worker counts of `--workers` ("1,2,4"): distinct, ascending, each from 1 to the
    partition count (a worker beyond it would own nothing and measure nothing)."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--workers must be comma-separated integers, not {text!r}") from None
    if not counts:
        raise ValueError("--workers names no worker count")
    if counts[0] < 1 or counts[-1] > partitions:
        raise ValueError(f"--workers: each count must be from 1 to {partitions} (the partitions)")
    return counts


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of the metric `name` in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            total += float(match.group(3))
    return total


def owned_partitions(text: str) -> set[int]:
    """The partitions a worker owns, read from its `engage_consumer_lag_messages` series (one
    per owned input topic-partition once fetched; a revoked partition's series is removed)."""
    owned: set[int] = set()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == "engage_consumer_lag_messages" and match.group(2):
            found = re.search(r'partition="(\d+)"', match.group(2))
            if found:
                owned.add(int(found.group(1)))
    return owned


@dataclass(frozen=True)
class Scrape:
    """What one poll of one worker's /metrics says."""

    ready: bool
    processed: float
    cpu_seconds: float
    owned: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        """Read readiness, events processed, CPU time and owned partitions from /metrics."""
        return cls(
            ready=metric_sum(text, "engage_worker_ready") == 1,
            processed=metric_sum(text, "engage_events_processed_total"),
            cpu_seconds=metric_sum(text, "process_cpu_seconds_total"),
            owned=frozenset(owned_partitions(text)),
        )


def group_settled(scrapes: Sequence[Scrape], partitions: int) -> bool:
    """Every worker ready, and every partition owned by exactly one of them."""
    owned = [p for s in scrapes for p in s.owned]
    return all(s.ready for s in scrapes) and sorted(owned) == list(range(partitions))


def cores_model(cpu_per_event: float, *, cores: int, partitions: int) -> float:
    """Modelled events/s of `cores` workers, one per core with nothing else on it: each core
    gives 1 / cpu_per_event events/s; workers beyond the partition count own nothing. A model,
    not a measurement: it leaves out the broker, the network and Redis."""
    return min(cores, partitions) / cpu_per_event


# --- the shell: workers, scrapes, load ---------------------------------------------------------


def scrape(worker: Worker) -> Scrape:
    """One /metrics poll of a worker (a worker not answering yet reads as not ready)."""
    try:
        status, body = worker.get("/metrics")
    except OSError:
        return Scrape(ready=False, processed=0.0, cpu_seconds=0.0, owned=frozenset())
    if status != 200:
        return Scrape(ready=False, processed=0.0, cpu_seconds=0.0, owned=frozenset())
    return Scrape.parse(body.decode())


def scrape_all(workers: Sequence[Worker]) -> list[Scrape]:
    """A poll of every worker, in order."""
    return [scrape(w) for w in workers]


def start_all(workers: Sequence[Worker], timeout: float = 240) -> None:
    """Start the workers at the same moment and wait until each answers /readyz."""
    with ThreadPoolExecutor(len(workers)) as pool:
        list(pool.map(lambda w: w.start(timeout=timeout), workers))


def stop_all(workers: Sequence[Worker]) -> None:
    """Stop the workers (SIGTERM, then SIGKILL past the timeout), in parallel."""
    with ThreadPoolExecutor(max(1, len(workers))) as pool:
        list(pool.map(lambda w: w.stop(), workers))


def make_workers(
    k: int, *, bootstrap: str, app_id: str, namespace: str, logs: Path
) -> list[Worker]:
    """k workers of one app id (one consumer group) over the namespace's topics."""
    return [
        Worker(
            bootstrap=bootstrap,
            app_id=app_id,
            namespace=namespace,
            log_path=logs / f"{app_id}-{i}.log",
            partitions=PARTITIONS,
            extra_env=WORKER_ENV,
        )
        for i in range(k)
    ]


def topic_settings(bootstrap: str, namespace: str) -> Settings:
    """Settings to create a namespace's topics with 16 partitions (the app id is the
    namespace: the default app's changelogs may exist with another partition count)."""
    return Settings(
        broker=f"kafka://{bootstrap}",
        topic_namespace=namespace,
        app_id=namespace,
        partitions=PARTITIONS,
    )


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, for the record."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Point:
    """One worker count's figures."""

    workers: int
    events: float
    seconds: float
    shares: list[float]
    cpu_seconds: list[float]
    settle_s: float
    load: str

    @property
    def rate(self) -> float:
        """Total events/s over the measured window."""
        return self.events / self.seconds

    @property
    def cpu_per_event(self) -> float:
        """Seconds of worker CPU per processed event, all workers together."""
        return sum(self.cpu_seconds) / self.events


def measure(k: int, *, bootstrap: str, namespace: str, n: int, logs: Path) -> Point:
    """Total and per-worker throughput of k workers of a fresh group over the same topics,
    from the settled group to the scrape that counts all n events."""
    workers = make_workers(
        k, bootstrap=bootstrap, app_id=unique(f"scale-{k}w"), namespace=namespace, logs=logs
    )
    spawned = time.perf_counter()
    try:
        start_all(workers)
        first = wait_for(
            lambda: group_settled(s := scrape_all(workers), PARTITIONS) and s,
            timeout=300,
            interval=0.1,
            what=f"{k} workers settled",
        )
        began = time.perf_counter()
        if sum(s.processed for s in first) >= n:
            raise SystemExit(
                f"{k} workers processed all {n} events before the group settled: raise --events"
            )
        last = wait_for(
            lambda: sum((s := scrape_all(workers))[i].processed for i in range(k)) >= n and s,
            timeout=1800,
            interval=0.25,
            what=f"{n} events processed",  # a scrape costs CPU
        )
        ended = time.perf_counter()
        return Point(
            workers=k,
            events=sum(b.processed - a.processed for a, b in zip(first, last, strict=True)),
            seconds=ended - began,
            shares=[b.processed - a.processed for a, b in zip(first, last, strict=True)],
            cpu_seconds=[b.cpu_seconds - a.cpu_seconds for a, b in zip(first, last, strict=True)],
            settle_s=began - spawned,
            load=load_average(),
        )
    finally:
        stop_all(workers)


class LiveTraffic:
    """Persona traffic sent at a steady rate from a thread, until stopped: the load under which
    the rebalances are timed."""

    def __init__(self, bootstrap: str, namespace: str, rate: float, customers: int) -> None:
        """Prepare enough messages for ten minutes at `rate` (cycled if the run is longer)."""
        self.bootstrap, self.namespace, self.rate = bootstrap, namespace, rate
        self.messages = persona_traffic(int(rate * 600), customers, seed=2)
        self.stopping = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            started = time.perf_counter()
            while not self.stopping.is_set():
                due = int((time.perf_counter() - started) * self.rate)
                while self.sent < due:
                    suffix, key, value = self.messages[self.sent % len(self.messages)]
                    await producer.send(f"{self.namespace}.{suffix}", key=key, value=value)
                    self.sent += 1
                await asyncio.sleep(0.01)
            await producer.flush()
        finally:
            await producer.stop()

    def __enter__(self) -> LiveTraffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)


def settle_time(workers: Sequence[Worker], since: float, timeout: float = 300) -> float:
    """Seconds from `since` until the group is settled and every worker has processed events
    after it settled (the group is whole and processing again)."""
    settled = wait_for(
        lambda: group_settled(s := scrape_all(workers), PARTITIONS) and s,
        timeout=timeout,
        interval=0.1,
        what="group settled",
    )
    wait_for(
        lambda: all(
            b.processed > a.processed for a, b in zip(settled, scrape_all(workers), strict=True)
        ),
        timeout=timeout,
        interval=0.1,
        what="every worker processing",
    )
    return time.perf_counter() - since


def web_up(worker: Worker) -> bool:
    """The worker's web server answers (any status): its process has started and is about to
    join the group."""
    if not worker.alive():
        raise AssertionError(f"worker exited: {worker.log_tail()}")
    try:
        worker.get("/healthz")
    except OSError:
        return False
    return True


@dataclass
class Settle:
    """One rebalance: a worker joining or leaving, and how long the group took to settle."""

    event: str
    seconds: float  # from the start of the joining process, or from SIGTERM to the leaver
    after_start_up: float | None  # join: from the joiner's web server answering
    load: str


def rebalances(
    *, bootstrap: str, base: int, rate: float, rounds: int, customers: int, logs: Path
) -> list[Settle]:
    """Settle times of a worker joining and leaving a group of `base` workers under live load."""
    from stream.adapter.topics import ensure_topics

    namespace = app_id = unique("scale-rebalance")
    asyncio.run(ensure_topics(topic_settings(bootstrap, namespace)))
    out: list[Settle] = []
    group = make_workers(base, bootstrap=bootstrap, app_id=app_id, namespace=namespace, logs=logs)
    with LiveTraffic(bootstrap, namespace, rate, customers):
        try:
            start_all(group)
            settle_time(group, time.perf_counter())
            for r in range(rounds):
                joiner = Worker(
                    bootstrap=bootstrap,
                    app_id=app_id,
                    namespace=namespace,
                    log_path=logs / f"{app_id}-join{r}.log",
                    partitions=PARTITIONS,
                    extra_env=WORKER_ENV,
                )
                group.append(joiner)
                joined = time.perf_counter()
                with ThreadPoolExecutor(1) as pool:
                    started = pool.submit(joiner.start, 240)
                    wait_for(
                        lambda w=joiner: w.proc is not None and web_up(w),
                        timeout=240,
                        what="the joining worker's web server",
                    )
                    up = time.perf_counter() - joined
                    started.result()
                took = settle_time(group, joined)
                out.append(Settle("join", took, took - up, load_average()))
                left = time.perf_counter()
                joiner.stop()
                group.remove(joiner)
                out.append(Settle("leave", settle_time(group, left), None, load_average()))
        finally:
            stop_all(group)
    return out


def print_curve(points: Sequence[Point], partitions: int) -> None:
    """The throughput table, the per-event CPU time, and the N-core model from it."""
    base = points[0]
    print(
        f"\n| workers | events/s | per worker | vs {base.workers} worker(s) | "
        "CPU ms/event | events/s per CPU-second | worker cores busy | load average |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for p in points:
        print(
            f"| {p.workers} | {p.rate:,.0f} | {p.rate / p.workers:,.0f} | "
            f"{p.rate / base.rate:.2f} | {p.cpu_per_event * 1000:.3f} | "
            f"{1 / p.cpu_per_event:,.0f} | {sum(p.cpu_seconds) / p.seconds:.2f} | {p.load} |"
        )
    for p in points:
        shares = ", ".join(f"{s / p.events:.0%}" for s in p.shares)
        print(
            f"{p.workers} worker(s): settled {p.settle_s:.1f} s after the start, measured "
            f"{p.events:,.0f} events over {p.seconds:.1f} s; shares {shares}; worker CPU "
            f"{sum(p.cpu_seconds):.1f} s"
        )
    cpu = base.cpu_per_event
    busy = sum(base.cpu_seconds) / base.seconds
    modelled = ", ".join(
        f"{c} cores {cores_model(cpu, cores=c, partitions=partitions) * min(1.0, busy):,.0f}"
        f"-{cores_model(cpu, cores=c, partitions=partitions):,.0f}/s"
        for c in (4, 8, 16)
    )
    print(
        f"\nmodel (not a measurement), one worker per free core at {cpu * 1000:.3f} ms of CPU "
        f"per event ({busy:.2f} of its core busy alone): {modelled}; capped at {partitions} "
        "workers (the partitions)"
    )


def main(argv: Sequence[str] | None = None, *, run: Callable[..., int] | None = None) -> int:
    """Parse the arguments (exit 2 on a usage error), then run the benchmark."""
    parser = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", default="1,2,4", help="worker counts (default 1,2,4)")
    parser.add_argument(
        "--live-rate",
        type=float,
        default=2000.0,
        help="events/s of live traffic while rebalances are timed",
    )
    parser.add_argument(
        "--rebalance-base",
        type=int,
        default=2,
        help="workers in the group a worker joins and leaves",
    )
    parser.add_argument("--rounds", type=int, default=2, help="joins and leaves to time")
    parser.add_argument("--skip", default="", help="comma-separated: curve,rebalance")
    parser.add_argument("--bootstrap", help="an existing broker; default: the local stack")
    args = parser.parse_args(argv)
    try:
        counts = parse_counts(args.workers, PARTITIONS)
    except ValueError as exc:
        parser.error(str(exc))
    if args.events < 1000 or args.live_rate <= 0 or args.rounds < 1:
        parser.error("--events must be at least 1000, --live-rate and --rounds positive")
    if not 1 <= args.rebalance_base < PARTITIONS:
        parser.error(f"--rebalance-base must be from 1 to {PARTITIONS - 1}")
    skip = set(filter(None, args.skip.split(",")))
    if skip - {"curve", "rebalance"}:
        parser.error(f"--skip: unknown {sorted(skip - {'curve', 'rebalance'})}")
    return (run or execute)(args, counts, skip)


def execute(args: argparse.Namespace, counts: list[int], skip: set[str]) -> int:
    """Run the curve and the rebalance timings and print them."""
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        from stream.tools.devstack import ensure_up

        bootstrap = ensure_up(("kafka",))["kafka"]
    print(f"{os.cpu_count()} cores; load average {load_average()} (1, 5, 15 min)")
    with tempfile.TemporaryDirectory() as tmpdir:
        logs = Path(os.environ.get("BENCH_LOGS") or tmpdir)  # BENCH_LOGS: keep the workers' logs
        logs.mkdir(parents=True, exist_ok=True)
        if "curve" not in skip:
            from stream.adapter.topics import ensure_topics

            namespace = unique("scale")
            # Each measured group's app id gets its changelog topics from its workers.
            asyncio.run(ensure_topics(topic_settings(bootstrap, namespace)))
            messages = persona_traffic(args.events, args.customers, args.seed)
            produce(bootstrap, [(f"{namespace}.{s}", k, v) for s, k, v in messages])
            print(
                f"{len(messages)} persona events ({args.customers} customers), "
                f"{PARTITIONS} partitions"
            )
            points = []
            for k in counts:
                points.append(
                    measure(k, bootstrap=bootstrap, namespace=namespace, n=len(messages), logs=logs)
                )
                print(f"  {k} worker(s): {points[-1].rate:,.0f} events/s", flush=True)
            print_curve(points, PARTITIONS)
        if "rebalance" not in skip:
            timings = rebalances(
                bootstrap=bootstrap,
                base=args.rebalance_base,
                rate=args.live_rate,
                rounds=args.rounds,
                customers=args.customers,
                logs=logs,
            )
            print(
                f"\nrebalance settle times, {args.rebalance_base} workers + 1 joining and "
                f"leaving, live traffic at {args.live_rate:,.0f} events/s:"
            )
            for t in timings:
                since_up = (
                    f", {t.after_start_up:.1f} s after its web server answered"
                    if t.after_start_up is not None
                    else ""
                )
                print(f"  {t.event}: {t.seconds:.1f} s{since_up} (load average {t.load})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
