"""Where a worker's CPU time goes while it works through a backlog, sampled with py-spy.

    .venv/bin/python bench/profile.py --events 150000 --customers 1500
    .venv/bin/python bench/profile.py --row raw      # the raw engines row instead
    .venv/bin/python bench/profile.py --read out.txt # summarise a py-spy raw file again

Produces persona traffic to a fresh namespace, starts `engage worker` on it (or, with
`--row raw`, the raw aiokafka loop of `bench/raw_engage.py`), and samples it with py-spy
(`pip install py-spy`: a sampling profiler that attaches to a running process) until the
backlog is processed: `--nonblocking` (the process is never paused), `--threads` (the main
thread, where the engines and the shell run, apart from Faust's consumer thread), `--idle`
(samples waiting for the network are kept, and counted apart), `--format raw` (one line per
distinct stack with its sample count, kept in `--out`).

It prints the busy samples (those not waiting in the event loop's `select` or on a lock) as
tables: self time by package, the share of named parts of the worker (each the share of
busy samples whose stack contains it, so nested parts add up to their parent, not to 100 %),
and the functions with the most self and cumulative time. The worker's `/metrics` is
scraped once a second to see when the backlog is done; that costs the worker a little CPU,
shown in its own row.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import persona_traffic  # noqa: E402

from stream.tools.processes import Worker, produce, unique, wait_for  # noqa: E402

PARTITIONS = 4

#: Named parts of a worker: (label, frames any of which puts a sample in the part).
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("engine: PartitionEngine.process", ("PartitionEngine.process ",)),
    ("  accept: parse and validate", ("accept (stream/core/ingest.py)",)),
    (
        "  rituals: on_event and due wake-ups",
        ("on_event (stream/core/rituals.py)", "PartitionEngine._run_due "),
    ),
    ("  fold into the state", ("fold (stream/core/state.py)",)),
    ("  state decode (store reads)", ("decode (stream/core/state.py)",)),
    ("  partition clock", ("PartitionEngine._advance ",)),
    ("  encode changed states", ("PartitionEngine._flush ",)),
    ("  acknowledged outboxes cleared", ("PartitionEngine._clear_outboxes ",)),
    ("engine: settle (acknowledgements without records)", ("PartitionEngine.settle ",)),
    ("commit protocol: Checkpoint.commit", ("Checkpoint.commit ",)),
    ("  split: offset continuity", ("Positions.split ",)),
    ("  queue: writes and outputs into the sink", ("Checkpoint._queue ",)),
    ("  flush: per-record sends to the producer", ("AtLeastOnceSink.flush ",)),
    ("  count: metrics and KPIs", ("BatchShell._count ",)),
    ("acknowledgement callbacks", ("Acknowledgements._answered ",)),
    ("direct drain: a fetch to the shell", ("DirectConsumer.fetch_once ",)),
    ("aiokafka producer: requests and the wire", ("aiokafka/producer/sender.py",)),
    ("Faust consumer thread: fetches, heartbeats, commits", ("WorkerThread.run ",)),
    ("/metrics scrapes", ("metrics_page ",)),
    ("raw loop: sends", ("RawEngage._write ",)),
    ("raw loop: getmany", ("AIOKafkaConsumer.getmany ",)),
    ("raw loop: flush and commit", ("RawEngage.settle ", "AIOKafkaConsumer.commit ")),
    ("start-up: imports, topics", ("_find_and_load ", "ensure_topics ")),
]
PACKAGES = ("stream/core", "stream/adapter", "stream/telemetry", "schemas/", "pydantic",
            "aiokafka", "faust/", "mode/", "asyncio", "prometheus_client", "aiohttp",
            "raw_engage", "json/")  # fmt: skip

Stack = tuple[str, list[str], int]  # (thread, frames root first, samples)


def read_stacks(path: Path) -> list[Stack]:
    """A py-spy `--format raw --threads` file as (thread, frames without line numbers, n)."""
    out: list[Stack] = []
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if len(frames) > 1 and n.isdigit():
            out.append((frames[0], [re.sub(r":\d+\)$", ")", f) for f in frames[1:]], int(n)))
    return out


def waiting(frames: list[str]) -> bool:
    """A sample of a thread waiting (in `select`, or on a lock), not computing."""
    return any("selectors.py" in f or ("threading.py" in f and "wait" in f) for f in frames[-3:])


def package(frame: str) -> str:
    """The package (or file) of a frame, for the self-time table."""
    m = re.search(r"\((.*)\)$", frame)
    where = m.group(1) if m else frame
    return next((p.rstrip("/") for p in PACKAGES if p in where), where.split("/")[0])


def summary(stacks: list[Stack], top: int) -> str:
    """Markdown tables of the busy samples: by package, by named part, by function."""
    busy = [(t, f, n) for t, f, n in stacks if not waiting(f)]
    total = sum(n for _, _, n in stacks)
    b = sum(n for _, _, n in busy) or 1
    lines = [
        f"{total} samples of all threads, {b} busy ({b / max(total, 1):.0%}; the rest waiting)"
    ]
    by_thread: Counter[str] = Counter()
    for thread, _f, n in busy:
        by_thread[thread] += n
    lines += ["", "| thread | share of busy samples |", "|---|---:|"]
    lines += [f"| {t} | {n / b:.1%} |" for t, n in by_thread.most_common()]
    own: Counter[str] = Counter()
    for _t, frames, n in busy:
        own[package(frames[-1])] += n
    lines += ["", "| self time by package | share |", "|---|---:|"]
    lines += [f"| {p} | {n / b:.1%} |" for p, n in own.most_common(12)]
    lines += ["", "| part (cumulative) | share of busy samples |", "|---|---:|"]
    for label, marks in PARTS:
        n = sum(c for _t, frames, c in busy if any(m in f + " " for f in frames for m in marks))
        if n:
            lines.append(f"| {label} | {n / b:.1%} |")
    selfs: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    for _t, frames, n in busy:
        selfs[frames[-1]] += n
        for f in set(frames):
            cum[f] += n
    lines += ["", f"| top {top} functions, self time | share |", "|---|---:|"]
    lines += [f"| {f} | {n / b:.1%} |" for f, n in selfs.most_common(top)]
    skip = ("runpy", "__main__", "stream/cli.py", "base_events.py", "asyncio/events.py",
            "mode/worker.py", "mode/services.py", "threading.py", "mode/threads.py")  # fmt: skip
    lines += ["", f"| top {top} functions, cumulative | share |", "|---|---:|"]
    shown = [(f, n) for f, n in cum.most_common() if not any(s in f for s in skip)]
    lines += [f"| {f} | {n / b:.1%} |" for f, n in shown[:top]]
    return "\n".join(lines)


def record(pid: int, out: Path, rate: int) -> subprocess.Popen[bytes]:
    """Start py-spy sampling process `pid` into `out` (stopped with SIGINT)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--format", "raw", "--nonblocking", "--idle",
         "--threads", "--rate", str(rate), "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip


def profile(args: argparse.Namespace, bootstrap: str, tmp: Path) -> float:
    """Produce the backlog, run the row under py-spy until it is processed; its seconds."""
    from stream.adapter.topics import ensure_topics
    from stream.settings import Settings

    namespace = unique("bench-profile")
    messages = persona_traffic(args.events, args.customers, args.seed, recent=True)
    n = len(messages)
    settings = Settings(
        broker=f"kafka://{bootstrap}", topic_namespace=namespace, partitions=PARTITIONS
    )
    asyncio.run(ensure_topics(settings))
    produce(bootstrap, [(f"{namespace}.{s}", k, v) for s, k, v in messages])
    print(f"{n} persona events ({args.customers} customers) produced", flush=True)
    if args.row == "raw":
        result = tmp / "raw.txt"
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "raw_engage.py"), bootstrap,
             unique("bench-profile-raw"), namespace, str(n), str(PARTITIONS), str(result)],
            cwd=ROOT, stdout=(tmp / "raw.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        spy = record(proc.pid, args.out, args.rate)
        try:
            text = wait_for(lambda: result.exists() and result.read_text(), timeout=900,
                            what="raw row done")  # fmt: skip
        finally:
            proc.wait(timeout=60)
            spy.wait(timeout=60)  # py-spy stops when the process exits
        return float(text.split()[0])
    worker = Worker(
        bootstrap=bootstrap, app_id=namespace, namespace=namespace,
        log_path=tmp / "worker.log", partitions=PARTITIONS,
        extra_env={"ENGAGE_LOG_LEVEL": "warning", "ENGAGE_REDIS_ENABLED": "false"},
    )  # fmt: skip
    worker.start(timeout=120)
    assert worker.proc is not None
    spy = record(worker.proc.pid, args.out, args.rate)
    started = time.perf_counter()
    try:
        wait_for(lambda: worker.metric("engage_events_processed_total") >= n, timeout=900,
                 interval=1.0, what=f"{n} events processed")  # fmt: skip
        return time.perf_counter() - started
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        worker.stop()


def main() -> int:
    """Profile a row (or read a profile again) and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", choices=("worker", "raw"), default="worker")
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--customers", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30, help="functions listed per table")
    parser.add_argument("--out", type=Path, default=Path("profile.txt"),
                        help="the py-spy raw file (written, or read with --read)")  # fmt: skip
    parser.add_argument("--read", action="store_true", help="only summarise --out again")
    parser.add_argument("--bootstrap", help="an existing broker; default: the local stack")
    args = parser.parse_args()
    if not args.read:
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            from stream.tools.devstack import ensure_up

            bootstrap = ensure_up(("kafka",))["kafka"]
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(os.environ.get("BENCH_LOGS") or tmpdir)
            tmp.mkdir(parents=True, exist_ok=True)
            secs = profile(args, bootstrap, tmp)
        print(f"{args.row}: backlog processed in {secs:.1f} s under the profiler; "
              f"samples in {args.out}")  # fmt: skip
    if not args.out.exists():
        print(f"no profile at {args.out} (is py-spy installed?)", file=sys.stderr)
        return 1
    print(summary(read_stacks(args.out), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
