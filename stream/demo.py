"""`engage demo`: the whole product on the local stack, in a few minutes.

Starts (or reuses) Kafka, Redis and Prometheus, runs a worker on a fresh topic namespace, emits
simulated customers in accelerated time with some malformed messages mixed in, waits until the
worker has handled every message, and prints what happened: events by type, dead letters by
reason, ritual decisions, and a few customers' profiles.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _samples(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    """Parsed samples of one metric from the worker's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    _, body = _get(port, "/metrics")
    out = []
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                out.append((sample.labels, sample.value))
    return out


def _wait(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.25)
    raise SystemExit(f"engage demo: timed out waiting for {what}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="engage demo", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--days", type=float, default=120.0, help="simulated days")
    parser.add_argument("--speed", type=float, default=8 * 86400.0, help="sim seconds per second")
    parser.add_argument("--bad-fraction", type=float, default=0.02)
    parser.add_argument("--seed", default="7")
    parser.add_argument("--web-port", type=int, default=6066)
    parser.add_argument("--keep", action="store_true", help="leave the worker running at the end")
    args = parser.parse_args(argv)
    console = Console()

    from stream.devstack import ensure_up

    with console.status("starting Kafka, Redis and Prometheus"):
        addresses = ensure_up(("kafka", "redis", "prometheus"))
    console.print(f"[green]stack up[/]: {addresses}")

    run = datetime.now(UTC).strftime("demo-%Y%m%d-%H%M%S")
    env = {
        **os.environ,
        "ENGAGE_BROKER": f"kafka://{addresses['kafka']}",
        "ENGAGE_APP_ID": run,
        "ENGAGE_TOPIC_NAMESPACE": run,
        "ENGAGE_WEB_PORT": str(args.web_port),
        "ENGAGE_PARTITIONS": "4",
        "ENGAGE_LOG_LEVEL": "warning",
    }
    log_path = Path(tempfile.gettempdir()) / f"engage-{run}.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "stream", "worker"],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with console.status(f"starting a worker (namespace {run}, log {log_path})"):
            _wait(lambda: _get(args.web_port, "/readyz")[0] == 200, 120, "the worker")
        console.print(f"[green]worker ready[/] on http://127.0.0.1:{args.web_port}")

        console.rule(f"emitting {args.customers} customers over {args.days:g} simulated days")
        emit = subprocess.run(
            [
                sys.executable, "-m", "stream", "emit",
                "--customers", str(args.customers),
                "--days", str(args.days),
                "--speed", str(args.speed),
                "--seed", args.seed,
                "--bad-fraction", str(args.bad_fraction),
            ],
            cwd=ROOT,
            env=env,
            check=False,
        )  # fmt: skip
        if emit.returncode != 0:
            console.print("[red]the emitter failed[/]")
            return 1
        emitted = _emitted_count(env)

        def consumed() -> bool:
            return sum(v for _, v in _samples(args.web_port, "engage_events_consumed_total")) >= (
                emitted
            )

        with console.status("waiting for the worker to handle every message"):
            _wait(consumed, 300, "the worker to catch up")
        _summary(console, args.web_port, env)
        console.print(
            f"\nmetrics    http://127.0.0.1:{args.web_port}/metrics\n"
            f"prometheus {addresses.get('prometheus', '')}\n"
            f"worker log {log_path}"
        )
        if args.keep:
            console.print(f"worker left running (pid {worker.pid}); Ctrl-C to stop")
            worker.wait()
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()


def _emitted_count(env: dict[str, str]) -> int:
    """Messages now in the namespace's input topics: what the worker must consume."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    from stream.settings import Settings

    settings = Settings(
        broker=env["ENGAGE_BROKER"],
        topic_namespace=env["ENGAGE_TOPIC_NAMESPACE"],
        partitions=int(env["ENGAGE_PARTITIONS"]),
    )

    async def count() -> int:
        from aiokafka import TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
        await consumer.start()
        try:
            tps = [
                TopicPartition(t, p)
                for t in settings.input_topics.values()
                for p in range(settings.partitions)
            ]
            ends = await consumer.end_offsets(tps)
            return sum(ends.values())
        finally:
            await consumer.stop()

    return asyncio.run(count())


def _summary(console: Console, port: int, env: dict[str, str]) -> None:
    by_type: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for labels, value in _samples(port, "engage_events_processed_total"):
        outcomes[labels["outcome"]] += int(value)
        if labels["outcome"] == "folded":
            by_type[labels["type"]] += int(value)
    table = Table(title="events folded by type")
    table.add_column("type")
    table.add_column("events", justify="right")
    for kind, n in sorted(by_type.items()):
        table.add_row(kind, str(n))
    console.print(table)
    table = Table(title="messages by outcome")
    table.add_column("outcome")
    table.add_column("messages", justify="right")
    for outcome, n in sorted(outcomes.items()):
        table.add_row(outcome, str(n))
    console.print(table)
    table = Table(title="dead letters by reason")
    table.add_column("reason")
    table.add_column("messages", justify="right")
    for labels, value in sorted(
        _samples(port, "engage_dlq_messages_total"), key=lambda s: s[0]["reason"]
    ):
        table.add_row(labels["reason"], str(int(value)))
    console.print(table)
    decisions = _samples(port, "engage_ritual_decisions_total")
    if decisions:
        table = Table(title="ritual decisions")
        table.add_column("ritual")
        table.add_column("status")
        table.add_column("decisions", justify="right")
        for labels, value in sorted(decisions, key=lambda s: (s[0]["ritual"], s[0]["status"])):
            if value:
                table.add_row(labels["ritual"], labels["status"], str(int(value)))
        console.print(table)
    prefix = "cust"
    shown = 0
    for i in range(1, 50):
        status, body = _get(port, f"/customers/{prefix}-{i:06d}")
        if status != 200:
            continue
        profile = json.loads(body)
        keys = [
            "customer_id", "lifecycle_stage", "quadrant", "engagement_score", "sentiment",
            "orders", "revenue", "currency", "nps_last", "open_complaints", "tier", "tz",
        ]  # fmt: skip
        console.print({k: profile.get(k) for k in keys})
        shown += 1
        if shown == 3:
            break
