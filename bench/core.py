"""Per-event cost of the engage core alone (no Kafka): the persona traffic through
`PartitionEngine`s via the in-process driver, in batches like the worker's.

    .venv/bin/python bench/core.py --events 30000
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import persona_traffic  # noqa: E402

from stream.core.clock import clock_for, wall_ms  # noqa: E402
from stream.core.driver import MemoryDriver  # noqa: E402
from stream.core.engine import EngineConfig, Record  # noqa: E402
from stream.core.ingest import Limits  # noqa: E402
from stream.core.partitioning import expected_partition  # noqa: E402
from stream.core.rules import load_rules  # noqa: E402

PARTITIONS = 4
NS = "bench"


def records(n: int, seed: int) -> list[Record]:
    """The first n persona events as records of a 4-partition namespace, offsets in order."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    now = wall_ms()
    for suffix, key, value in persona_traffic(n, 400, seed):
        topic = f"{NS}.{suffix}"
        p = expected_partition(key, PARTITIONS)
        o = offsets.get((topic, p), 0)
        offsets[(topic, p)] = o + 1
        out.append(Record(topic, p, o, now, key, value))
    return out


def main() -> int:
    """Print the core's events/s and µs/event over the persona traffic."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    recs = records(args.events, args.seed)
    inputs = {f"{NS}.{s}": s for s in {r.topic.rsplit(".", 1)[-1] for r in recs}}
    best = float("inf")
    for _ in range(args.repeat):
        config = EngineConfig(
            rules=load_rules(),
            clock=clock_for("live", grace_ms=1000),
            inputs=inputs,
            control_topic=f"{NS}.clock",
            namespace=NS,
            partitions=PARTITIONS,
            limits=Limits(max_future_skew=timedelta(days=3650)),
        )
        driver = MemoryDriver(config)
        wall = wall_ms()
        t0 = time.perf_counter()
        for i in range(0, len(recs), args.batch):
            driver.pipe(recs[i : i + args.batch], wall_ms=wall)
        best = min(best, time.perf_counter() - t0)
    n = len(recs)
    dlq = sum(n for key, n in driver.counts.items() if key[0] == "dlq")
    decisions = len(driver.decisions())
    print(f"core: {n / best:,.0f} events/s, {best / n * 1e6:.1f} µs/event "
          f"({decisions} decisions, {dlq} dlq)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
