"""Per-event cost of the engage core alone (no Kafka): the persona traffic through
`PartitionEngine`s via the in-process driver, in batches like the worker's.

    .venv/bin/python bench/core.py --events 30000
    .venv/bin/python bench/core.py --events 30000 --compare

`--compare` also times ingest's `accept` alone over the same messages, with the msgspec fast
path (what the worker runs) and with the reference Python parser only (`fast=False`), and the
whole core both ways, alternating rounds so both see the same machine load; best of `--repeat`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import persona_traffic  # noqa: E402

import stream.core.engine as engine_module  # noqa: E402
from stream.core.clock import clock_for, wall_ms  # noqa: E402
from stream.core.driver import MemoryDriver  # noqa: E402
from stream.core.engine import EngineConfig, Record  # noqa: E402
from stream.core.ingest import Limits, accept  # noqa: E402
from stream.core.partitioning import expected_partition  # noqa: E402
from stream.core.rules import load_rules  # noqa: E402

PARTITIONS = 4
NS = "bench"


def records(n: int, seed: int) -> list[Record]:
    """The first n persona events as records of a 4-partition namespace, offsets in order."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    now = wall_ms()
    for suffix, key, value in persona_traffic(n, 400, seed, recent=True):
        topic = f"{NS}.{suffix}"
        p = expected_partition(key, PARTITIONS)
        o = offsets.get((topic, p), 0)
        offsets[(topic, p)] = o + 1
        out.append(Record(topic, p, o, now, key, value))
    return out


def run_core(recs: list[Record], batch: int) -> tuple[float, MemoryDriver]:
    """Seconds for one fresh engine set to take all records, and the driver (for its counts)."""
    inputs = {f"{NS}.{s}": s for s in {r.topic.rsplit(".", 1)[-1] for r in recs}}
    config = EngineConfig(
        rules=load_rules(),
        clock=clock_for("live", grace_ms=1000),
        inputs=inputs,
        control_topic=f"{NS}.clock",
        namespace=NS,
        partitions=PARTITIONS,
        limits=LIMITS,
    )
    driver = MemoryDriver(config)
    wall = wall_ms()
    t0 = time.perf_counter()
    for i in range(0, len(recs), batch):
        driver.pipe(recs[i : i + batch], wall_ms=wall)
    return time.perf_counter() - t0, driver


def run_accept(recs: list[Record], *, fast: bool) -> float:
    """Seconds for `accept` alone over all records (as the engine calls it)."""
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    for r in recs:
        accept(r.key, r.value, now, LIMITS, partition=r.partition, partitions=PARTITIONS, fast=fast)
    return time.perf_counter() - t0


def with_reference_parser(fn: Callable[[], float]) -> float:
    """Run `fn` with the engine's `accept` forced onto the reference parser (fast=False)."""
    engine_module.accept = partial(accept, fast=False)  # type: ignore[assignment]
    try:
        return fn()
    finally:
        engine_module.accept = accept  # type: ignore[assignment]


LIMITS = Limits(max_future_skew=timedelta(days=3650))


def main() -> int:
    """Print the core's events/s and µs/event over the persona traffic (and, with --compare,
    accept's and the core's cost with and without the msgspec fast path)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare", action="store_true", help="fast path vs reference parser")
    args = parser.parse_args()
    recs = records(args.events, args.seed)
    n = len(recs)
    if args.compare:
        acc = {True: float("inf"), False: float("inf")}
        core = {True: float("inf"), False: float("inf")}
        for _ in range(args.repeat):
            for fast in (False, True):
                acc[fast] = min(acc[fast], run_accept(recs, fast=fast))
            core[True] = min(core[True], run_core(recs, args.batch)[0])
            core[False] = min(
                core[False], with_reference_parser(lambda: run_core(recs, args.batch)[0])
            )
        print(f"accept: {acc[False] / n * 1e6:.2f} µs/event reference parser, "
              f"{acc[True] / n * 1e6:.2f} µs/event msgspec fast path "
              f"({1 - acc[True] / acc[False]:.0%} less)")  # fmt: skip
        print(f"core:   {n / core[False]:,.0f} events/s ({core[False] / n * 1e6:.1f} µs/event) "
              f"reference parser, {n / core[True]:,.0f} events/s "
              f"({core[True] / n * 1e6:.1f} µs/event) msgspec fast path")  # fmt: skip
        return 0
    best = float("inf")
    driver = None
    for _ in range(args.repeat):
        took, driver = run_core(recs, args.batch)
        best = min(best, took)
    assert driver is not None
    dlq = sum(n for key, n in driver.counts.items() if key[0] == "dlq")
    decisions = len(driver.decisions())
    print(f"core: {n / best:,.0f} events/s, {best / n * 1e6:.1f} µs/event "
          f"({decisions} decisions, {dlq} dlq)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
