"""`engage demo`: the whole product on the local stack, in a few minutes.

Starts (or reuses) Kafka, Redis and Prometheus, runs a worker on a fresh topic namespace in
`follow` mode (its clocks follow event time, so months of rituals pass in minutes), and runs the
emitter: simulated customers in accelerated time who read the nudges and react to them, with a
few malformed messages mixed in. A live terminal view shows throughput, KPIs, ritual decisions
and the latest nudges; at the end it prints the totals, each ritual's measured lift (treated vs
held-out, with 95 % intervals and a verdict), writes the HTML report (`engage report`) and
prints where to look next.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from schemas.nudges import RITUALS
from stream.cli import EXIT_USAGE, command_parser, fail
from stream.core.rules import RulesError, load_rules
from stream.core.vocabulary import Status
from stream.telemetry.samples import Samples

ROOT = Path(__file__).resolve().parents[2]
#: `scheme://user:password@` (or `scheme://:password@`, `scheme://token@`) in printed text.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_SECRET_KEY = re.compile(r"password|secret|token", re.IGNORECASE)


def redacted(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by `***`: the demo prints
    addresses, and a terminal, a CI log or a screen share is no place for a password."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def stack_line(addresses: dict[str, str]) -> str:
    """What `ensure_up` returned, for people: addresses (credentials redacted), never the
    generated SASL password."""
    shown = [
        f"{name} {redacted(value)}"
        for name, value in addresses.items()
        if not _SECRET_KEY.search(name)
    ]
    return ", ".join(shown)


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _samples(port: int) -> Samples:
    """The worker's /metrics, parsed (none when it does not answer)."""
    _, body = _get(port, "/metrics")
    return Samples.of_text(body.decode())


class View:
    """What the live view shows, refreshed from the worker once a second."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples = Samples()
        self.kpis: dict[str, Any] = {}
        self.nudges: deque[dict[str, Any]] = deque(maxlen=8)
        self.nudge_count = 0
        self.rate = 0.0
        self._last = (time.monotonic(), 0.0)

    def refresh(self) -> None:
        self.samples = _samples(self.port)
        status, body = _get(self.port, "/kpis")
        if status == 200:
            self.kpis = json.loads(body)
        now, consumed = time.monotonic(), self.consumed
        then, before = self._last
        if now - then >= 0.5:
            self.rate = (consumed - before) / (now - then)
            self._last = (now, consumed)

    @property
    def consumed(self) -> float:
        return self.samples.get("engage_events_consumed_total")

    def render(self) -> Group:
        s = self.samples
        pipeline = Table(title="pipeline", show_header=False)
        pipeline.add_row("events/s", f"{self.rate:,.0f}")
        pipeline.add_row("consumed", f"{self.consumed:,.0f}")
        pipeline.add_row(
            "folded", f"{s.get('engage_events_processed_total', outcome='folded'):,.0f}"
        )
        pipeline.add_row("dead letters", f"{s.get('engage_dlq_messages_total'):,.0f}")
        pipeline.add_row("duplicates", f"{s.get('engage_duplicate_events_total'):,.0f}")
        clocks = [v for _, v in s.series("engage_partition_clock_seconds") if v]
        if clocks:
            sim = datetime.fromtimestamp(min(clocks), UTC).strftime("%Y-%m-%d %H:%M")
            pipeline.add_row("simulated now", sim)
        k = self.kpis
        kpis = Table(title="KPIs", show_header=False)
        for label, key in [
            ("NPS", "nps"),
            ("CSAT %", "csat_percent"),
            ("CES mean", "ces_mean"),
            ("FCR ratio", "first_contact_resolution_ratio"),
            ("stickiness", "stickiness"),
            ("customers", "customers"),
        ]:
            kpis.add_row(label, str(k.get(key)))
        stages = k.get("lifecycle_stages", {})
        kpis.add_row("stages", " ".join(f"{n}={int(v)}" for n, v in stages.items() if v))
        rituals = Table(title="ritual decisions")
        rituals.add_column("ritual")
        for status in Status:
            rituals.add_column(status, justify="right")
        rituals.add_column("lift (came back)", justify="right")
        lift = k.get("ritual_lift", {})
        for ritual in RITUALS:
            counts = [
                s.get("engage_ritual_decisions_total", ritual=ritual, status=st) for st in Status
            ]
            rituals.add_row(
                ritual, *(f"{c:.0f}" for c in counts),
                str(lift.get(ritual, {}).get("came_back")),
            )  # fmt: skip
        latest = Table(title=f"latest nudges ({self.nudge_count} delivered)")
        for col in ("decided at (simulated)", "ritual", "customer", "category"):
            latest.add_column(col)
        for n in self.nudges:
            latest.add_row(n["decided_at"][:16], n["ritual"], n["customer_id"], n["category"])
        return Group(Table.grid(padding=2), pipeline, kpis, rituals, latest)


def _kafka_consumer(bootstrap: str, *topics: str, **options: Any) -> Any:
    """A consumer of the demo's broker with the ENGAGE_ security settings (one home)."""
    from stream.kafka_client import consumer
    from stream.settings import Settings

    return consumer(Settings(broker=f"kafka://{bootstrap}"), *topics, **options)


async def _watch_nudges(bootstrap: str, topic: str, view: View, stop: asyncio.Event) -> None:
    consumer = _kafka_consumer(
        bootstrap, topic, auto_offset_reset="earliest", enable_auto_commit=False,
        metadata_max_age_ms=2000,
    )  # fmt: skip
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for msg in msgs:
                    view.nudges.append(json.loads(msg.value))
                    view.nudge_count += 1
    finally:
        await consumer.stop()


async def _end_offsets(bootstrap: str, topics: list[str], partitions: int) -> int:
    from aiokafka import TopicPartition

    consumer = _kafka_consumer(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def _run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from stream.settings import Settings
    from stream.tools.devstack import ensure_up

    if args.external:  # docker compose: the stack is already there, say where, start nothing
        addresses = {"kafka": Settings().bootstrap_servers}
        console.print(f"[green]using the running stack[/]: Kafka at {redacted(addresses['kafka'])}")
    else:
        with console.status("starting Kafka, Redis and Prometheus"):
            addresses = await asyncio.to_thread(ensure_up, ("kafka", "redis", "prometheus"))
        console.print(f"[green]stack up[/]: {stack_line(addresses)}")
    run = datetime.now(UTC).strftime("demo-%Y%m%d-%H%M%S")
    env = {
        **os.environ,
        "ENGAGE_BROKER": f"kafka://{addresses['kafka']}",
        "ENGAGE_APP_ID": run,
        "ENGAGE_TOPIC_NAMESPACE": run,
        "ENGAGE_WEB_PORT": str(args.web_port),
        "ENGAGE_PARTITIONS": "4",
        "ENGAGE_MODE": "follow",
        "ENGAGE_KPI_INTERVAL_S": "2",
        "ENGAGE_LOG_LEVEL": "warning",
    }
    if args.rules:
        env["ENGAGE_RULES_FILE"] = str(Path(args.rules).resolve())
    settings = Settings(broker=env["ENGAGE_BROKER"], topic_namespace=run, partitions=4)
    logs = Path(tempfile.gettempdir())
    worker = subprocess.Popen(
        [sys.executable, "-m", "stream", "worker"], cwd=ROOT, env=env,
        stdout=(logs / f"engage-{run}-worker.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    emitter: subprocess.Popen[bytes] | None = None
    started = time.time()
    stop = asyncio.Event()
    view = View(args.web_port)
    try:
        with console.status(f"starting a worker (namespace {run})"):
            deadline = time.monotonic() + 120
            while _get(args.web_port, "/readyz")[0] != 200:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"engage demo: the worker did not start; see {logs}")
                await asyncio.sleep(0.25)
        console.print(
            f"[green]worker ready[/] on http://127.0.0.1:{args.web_port} "
            f"({args.customers} customers, {args.days:g} simulated days at "
            f"{args.speed / 86400:g} days/s)"
        )
        emitter = subprocess.Popen(
            [sys.executable, "-m", "stream", "emit", "--customers", str(args.customers),
             "--days", str(args.days), "--speed", str(args.speed), "--seed", args.seed,
             "--bad-fraction", str(args.bad_fraction), "--browse", str(args.browse), "--quiet"],
            cwd=ROOT, env=env, stdout=(logs / f"engage-{run}-emit.log").open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        watcher = asyncio.create_task(
            _watch_nudges(addresses["kafka"], settings.nudges_topic, view, stop)
        )
        inputs = list(settings.input_topics.values())
        live = None if args.plain else Live(view.render(), console=console, auto_refresh=False)
        if live is not None:
            live.start()
        try:
            caught_up_since = None
            while True:
                await asyncio.to_thread(view.refresh)
                if live is not None:
                    live.update(view.render(), refresh=True)
                if emitter.poll() is not None:
                    produced = await _end_offsets(addresses["kafka"], inputs, 4)
                    if view.consumed >= produced:
                        caught_up_since = caught_up_since or time.monotonic()
                        # a last segment refresh after the final event, then stop
                        if time.monotonic() - caught_up_since > 3:
                            break
                await asyncio.sleep(1)
        finally:
            if live is not None:
                live.stop()
        stop.set()
        await watcher
        await asyncio.to_thread(view.refresh)
        if emitter.returncode:
            raise SystemExit(f"engage demo: the emitter failed; see {logs}")
        console.print(view.render())
        console.print(_lift_table(view))
        summary = _summary(view)
        report = Path(args.report) if args.report else logs / f"engage-{run}-report.html"
        written = await asyncio.to_thread(
            _write_report, args.web_port, addresses.get("prometheus"), started, report, console
        )
        console.print(
            f"\nmetrics     http://127.0.0.1:{args.web_port}/metrics\n"
            f"KPIs        http://127.0.0.1:{args.web_port}/kpis\n"
            f"a profile   http://127.0.0.1:{args.web_port}/customers/cust-000001\n"
            f"prometheus  {redacted(addresses.get('prometheus', ''))}\n"
            f"logs        {logs}/engage-{run}-*.log"
        )
        if written is not None:
            summary["report"] = str(written)
            console.print(f"report      {written}")
        if args.keep:
            console.print(f"the worker keeps running (pid {worker.pid}); Ctrl-C stops it")
            await asyncio.to_thread(worker.wait)
        return summary
    finally:
        stop.set()
        for proc in (emitter, worker):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def arm_rates(samples: Samples, ritual: str) -> dict[str, dict[str, float]]:
    """Per arm: decisions, and the share of them followed by each outcome within the window."""
    out: dict[str, dict[str, float]] = {}
    for arm in ("treated", "held_out"):
        decided = samples.outcome(ritual, arm, "decided")
        row = {"decided": decided}
        for outcome in ("came_back", "reviewed", "purchased"):
            n = samples.outcome(ritual, arm, outcome)
            row[outcome] = n / decided if decided else 0.0
        out[arm] = row
    return out


def lifts(samples: Samples) -> dict[str, Any]:
    """Per ritual and outcome: rates with Wilson intervals, Newcombe's interval of the
    difference, the Katz interval of the ratio and a verdict (stream.core.lift)."""
    from stream.telemetry.kpis import ritual_lift

    return ritual_lift(samples.outcome)


def _rate(item: dict[str, Any]) -> str:
    if item["estimate"] is None:
        return "–"
    return f"{item['estimate']:.0%} [{item['lower']:.0%}, {item['upper']:.0%}]"


def _signed(item: dict[str, Any]) -> str:
    if item["estimate"] is None:
        return "–"
    return f"{item['estimate']:+.0%} [{item['lower']:+.0%}, {item['upper']:+.0%}]"


def _lift_table(view: View, outcome: str = "came_back") -> Table:
    table = Table(
        title=f"outcomes within 7 days of a decision: treated vs held out ({outcome}, 95 % CI)",
        caption="rates: Wilson; difference: Newcombe hybrid score; lift: Katz log (* a zero count: "
        "0.5 added to each cell); verdict: the difference's interval excludes 0, else the "
        "held-out customers needed for 80 % power",
    )
    for col in ("ritual", "treated", "rate", "held out", "rate", "difference", "lift", "verdict"):
        table.add_column(col, justify="left" if col in {"ritual", "verdict"} else "right")
    for ritual, by_outcome in lifts(view.samples).items():
        x = by_outcome[outcome]
        if not (x["treated"] or x["held_out"]):
            continue
        ratio = x["ratio"]
        lift = (
            "–"
            if ratio["estimate"] is None
            else f"{ratio['estimate']:.2f} [{ratio['lower']:.2f}, {ratio['upper']:.2f}]"
            + ("*" if ratio["corrected"] else "")
        )
        table.add_row(
            ritual, str(x["treated"]), _rate(x["treated_rate"]), str(x["held_out"]),
            _rate(x["held_out_rate"]), _signed(x["difference"]), lift, x["verdict"],
        )  # fmt: skip
    return table


def _write_report(
    port: int, prometheus: str | None, started: float, out: Path, console: Console
) -> Path | None:
    """The HTML report of the run: figures from the worker's /kpis, trends from Prometheus
    (this worker's instance, since the run started) when Prometheus scrapes it."""
    from stream.tools.report import ReportError, build, write

    window = max(time.time() - started + 30, 120)
    selector = f'instance="127.0.0.1:{port}"'
    token = os.environ.get("ENGAGE_API_TOKEN") or None  # the worker inherits it too
    kpis = f"http://127.0.0.1:{port}"
    try:
        try:
            data = build(prometheus=prometheus, kpis=kpis, selector=selector, window_s=window,
                         token=token)  # fmt: skip
        except ReportError:
            data = build(prometheus=None, kpis=kpis, token=token)
        return write(data, out)
    except (ReportError, OSError) as exc:
        console.print(f"[yellow]no report[/]: {redacted(str(exc))}")
        return None


def _summary(view: View) -> dict[str, Any]:
    s = view.samples
    decisions: Counter[str] = Counter()
    for labels, value in s.series("engage_ritual_decisions_total"):
        decisions[f"{labels['ritual']}/{labels['status']}"] += int(value)
    return {
        "consumed": view.consumed,
        "dead_letters": {  # the reasons seen (every reason is exported, most at 0)
            labels["reason"]: v for labels, v in s.series("engage_dlq_messages_total") if v
        },
        "decisions": {k: v for k, v in decisions.items() if v},
        "nudges_seen": view.nudge_count,
        "outcomes": {ritual: arm_rates(s, ritual) for ritual in RITUALS},
        "lift": lifts(s),
        "kpis": view.kpis,
    }


def build_parser() -> argparse.ArgumentParser:
    """The demo's options (also read by tests/system/test_compose.py for the compose demo
    service)."""
    parser = command_parser("demo", __doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--days", type=float, default=400.0, help="simulated days")
    parser.add_argument(
        "--speed", type=float, default=3 * 86400.0, help="simulated seconds per second"
    )
    parser.add_argument("--bad-fraction", type=float, default=0.01)
    parser.add_argument(
        "--browse", type=float, default=0.2, help="scale of browsing clicks (lighter traffic)"
    )
    parser.add_argument("--seed", default="7")
    parser.add_argument("--rules", help="a rules file (default: the packaged rules)")
    parser.add_argument("--web-port", type=int, default=6066)
    parser.add_argument("--plain", action="store_true", help="no live view; print at the end")
    parser.add_argument("--summary-json", help="also write the final figures here")
    parser.add_argument("--keep", action="store_true", help="leave the worker running at the end")
    parser.add_argument(
        "--external",
        action="store_true",
        help="use the Kafka and Redis given by ENGAGE_BROKER and ENGAGE_REDIS_URL instead of "
        "starting the local stack (docker compose --profile demo)",
    )
    parser.add_argument(
        "--report", help="write the HTML report here (default: next to the logs, named by run)"
    )
    return parser


def main(argv: list[str]) -> int:
    """Run the demo; 0 at the end, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    if args.rules:  # before starting anything: a bad file would stop the worker at start-up
        try:
            load_rules(args.rules)
        except RulesError as exc:
            return fail("demo", exc, EXIT_USAGE)
    console = Console()
    if not console.is_terminal:  # piped or captured: wide enough for the lift table, unwrapped
        console = Console(width=max(console.width, 200))
    try:
        summary = asyncio.run(_run(args, console))
    except KeyboardInterrupt:
        return 130
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2, sort_keys=True))
    return 0
