"""Hand-over between two workers, with and without standby replicas (`make bench-handover`).

Writes N customer states (default 200,000) straight to the customers changelog of a fresh app
id, as `bench/startup.py` does. Then, for each `ENGAGE_STANDBY_REPLICAS` value asked (default
0 and 1), with fresh data dirs:

1. starts worker A and waits until it is ready; starts worker B and waits until both are
   ready, own half of the partitions each and (with standbys) mirror the other half, caught up
   (`engage_faust_table_partitions`, `engage_faust_recovery_remaining_records`);
2. stops A (SIGTERM: it leaves the group at once; a crash adds `ENGAGE_SESSION_TIMEOUT_S`
   before the group notices) and times B until it owns every partition and `/readyz` answers
   200 again: the hand-over.

    .venv/bin/python bench/handover.py --customers 200000 --store rocksdb
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from startup import PARTITIONS, delete_topics, templates, write_changelog  # noqa: E402

from stream.tools.processes import Worker, free_port, unique  # noqa: E402
from stream.topic_names import customers_changelog  # noqa: E402

TABLES = 2  # customers and control: each partition is one changelog partition of each


def role(worker: Worker, name: str) -> float:
    """The worker's count of table changelog partitions in `name` (active or standby)."""
    return worker.metric("engage_faust_table_partitions", role=name)


def settled(a: Worker, b: Worker, standbys: int) -> bool:
    """Both ready, half of the partitions each, and (with standbys) the other half mirrored
    and caught up."""
    for w in (a, b):
        if not w.ready() or role(w, "active") != TABLES * PARTITIONS // 2:
            return False
        if standbys and (
            role(w, "standby") != TABLES * PARTITIONS // 2
            or w.metric("engage_faust_recovery_remaining_records", role="standby") > 0
        ):
            return False
    return True


def start(worker: Worker) -> None:
    """Start the worker's process (not waiting for it)."""
    log = worker.log_path.open("ab")
    worker.proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "worker"], cwd=ROOT, env=worker.env,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def wait(probe: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `probe` until true; the time it took (fails at the deadline)."""
    started = time.perf_counter()
    while not probe():
        if time.perf_counter() - started > timeout:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.05)
    return time.perf_counter() - started


def handover(args: argparse.Namespace, bootstrap: str, tmp: Path, app_id: str, namespace: str,
             standbys: int) -> float:  # fmt: skip
    """One run: A and B settled, A stopped, the seconds until B is ready with everything."""
    env = {
        "ENGAGE_STORE": f"{args.store}://",
        "ENGAGE_STANDBY_REPLICAS": str(standbys),
    }
    workers = [
        Worker(
            bootstrap=bootstrap,
            app_id=app_id,
            namespace=namespace,
            log_path=tmp / f"standby{standbys}-{name}.log",
            partitions=PARTITIONS,
            web_port=free_port(),
            extra_env={**env, "ENGAGE_DATA_DIR": str(tmp / f"data-standby{standbys}-{name}")},
        )
        for name in ("a", "b")
    ]
    a, b = workers
    try:
        start(a)
        wait(a.ready, args.timeout, "A ready")
        start(b)
        took = wait(lambda: settled(a, b, standbys), args.timeout, "A and B settled")
        print(f"standby replicas {standbys}: A and B settled {took:.1f} s after B started",
              flush=True)  # fmt: skip
        assert a.proc is not None
        os.killpg(a.proc.pid, signal.SIGTERM)
        # B's count of active partitions changes inside the rebalance, when it is not ready
        took = wait(
            lambda: role(b, "active") == TABLES * PARTITIONS and b.ready(),
            args.timeout, "B ready with every partition",
        )  # fmt: skip
        print(f"standby replicas {standbys}: B ready with every partition {took:.1f} s after "
              "A was stopped", flush=True)  # fmt: skip
        return took
    finally:
        for w in workers:
            w.stop(timeout=60)


async def prepare(args: argparse.Namespace, bootstrap: str, app_id: str, namespace: str) -> None:
    """The topics and the changelog of N customers."""
    from stream.adapter.topics import ensure_topics
    from stream.settings import Settings

    settings = Settings(
        broker=f"kafka://{bootstrap}", app_id=app_id, topic_namespace=namespace,
        partitions=PARTITIONS,
    )  # fmt: skip
    tpl = templates(args.template_customers, args.seed)
    await ensure_topics(settings)
    await write_changelog(bootstrap, customers_changelog(app_id), tpl, args.customers, "ho")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--store", choices=("memory", "rocksdb"), default="rocksdb")
    parser.add_argument("--standbys", default="0,1", help="comma-separated standby counts")
    parser.add_argument("--template-customers", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="per phase, seconds")
    parser.add_argument("--bootstrap", help="an existing broker; default: the local stack")
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        from stream.tools.devstack import ensure_up

        bootstrap = ensure_up(("kafka", "redis"))["kafka"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="engage-handover-") as tmpdir:
        tmp = Path(os.environ.get("BENCH_LOGS") or tmpdir)  # BENCH_LOGS: keep the logs
        tmp.mkdir(parents=True, exist_ok=True)
        for standbys in (int(s) for s in args.standbys.split(",")):
            # a fresh app id per run: a new consumer group and changelog, same customers
            app_id, namespace = unique("bench-handover"), unique("bhand")
            try:
                asyncio.run(prepare(args, bootstrap, app_id, namespace))
                rows.append((standbys, handover(args, bootstrap, tmp, app_id, namespace,
                                                standbys)))  # fmt: skip
            finally:
                asyncio.run(delete_topics(bootstrap, (app_id, f"{namespace}.")))
    print()
    print(f"Hand-over with {args.customers:,} customers, {PARTITIONS} partitions, "
          f"{args.store}://, two workers, one stopped (SIGTERM):")  # fmt: skip
    print("| standby replicas | ready with every partition after the stop |")
    print("|---:|---:|")
    for standbys, took in rows:
        print(f"| {standbys} | {took:.1f} s |")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
