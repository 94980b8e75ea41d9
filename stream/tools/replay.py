"""`engage replay FILE.jsonl`: decide rituals over recorded events, in event time only.

Runs on the real broker: a fresh topic namespace, N workers in replay mode, the file's events
produced to their topics, then one replay declaration per partition on the clock topic (where
each input topic-partition ends, and the final instant to move the clocks to). Each worker
reports when a partition has reached the end; the decisions are then read back, deduplicated
by `nudge_id` (a rebalance may re-send one), sorted, summarised and optionally written out.
The same file and rules give the same decisions, byte for byte, with any number of workers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from stream.adapter.topics import TopicMismatch, ensure_topics
from stream.cli import EXIT_USAGE, command_parser, fail
from stream.core.rules import RulesError, load_rules
from stream.core.state import to_ms
from stream.core.vocabulary import Status
from stream.kafka_client import KafkaAccessError, consumer, describe_error, producer
from stream.settings import Settings, settings_problems

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ReplayRun:
    """One replay: its namespace, workers and outcome."""

    settings: Settings
    workers: int = 1
    until: int | None = None
    rules_file: str | None = None
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="engage-replay-")))
    replay_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    # --- workers -----------------------------------------------------------------------------

    def env(self, port: int) -> dict[str, str]:
        s = self.settings
        env = {
            **os.environ,
            "ENGAGE_BROKER": s.broker,
            "ENGAGE_APP_ID": s.app_id,
            "ENGAGE_TOPIC_NAMESPACE": s.topic_namespace,
            "ENGAGE_PARTITIONS": str(s.partitions),
            "ENGAGE_MODE": "replay",
            "ENGAGE_WEB_PORT": str(port),
            "ENGAGE_LOG_LEVEL": "warning",
            "ENGAGE_DATA_DIR": str(self.log_dir / f"data-{port}"),
        }
        if self.rules_file:
            env["ENGAGE_RULES_FILE"] = str(Path(self.rules_file).resolve())
        env.update(security_env(s))
        return env

    def start_workers(self, timeout: float = 120.0) -> None:
        for i in range(self.workers):
            port = _free_port()
            self.procs.append(self._spawn(i, port))
            self.ports.append(port)
        self._wait_ready(timeout)

    def _spawn(self, i: int, port: int) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"worker-{i}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "stream", "worker"],
            cwd=ROOT,
            env=self.env(port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(self._ready(port) for port in self.ports):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    raise RuntimeError(f"replay worker {i} exited; see {self.log_dir}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"replay workers not ready after {timeout} s; see {self.log_dir}"
                )
            time.sleep(0.2)

    def restart_worker(
        self,
        i: int,
        *,
        kill: bool = False,
        timeout: float = 300.0,
        while_down: Callable[[], object] | None = None,
    ) -> float:
        """Stop worker i (SIGKILL when `kill`: no shutdown code runs) and start it again with
        the same settings, as an orchestrator would after a crash; returns the seconds until
        it is ready. `while_down` runs between the two (what the dead worker left). The chaos
        suite uses it to prove a replay survives a crash."""
        proc = self.procs[i]
        if proc.poll() is None:
            if kill:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.terminate()
            proc.wait(timeout=30)
        if while_down is not None:
            while_down()
        started = time.monotonic()
        self.procs[i] = self._spawn(i, self.ports[i])
        self._wait_ready(timeout)
        return time.monotonic() - started

    @staticmethod
    def _ready(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop_workers(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    # --- the replay ----------------------------------------------------------------------------

    async def produce(self, lines: Iterable[bytes]) -> dict[tuple[str, int], int]:
        """Send every line to its topic; returns the end offset of every input partition."""
        s = self.settings
        out = producer(s, acks="all", enable_idempotence=True, max_request_size=2 * 1024 * 1024)
        await out.start()
        try:
            pending = []
            for line in lines:
                topic, key = self._route(line)
                pending.append(await out.send(topic, value=line, key=key))
                if len(pending) >= 5000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
        finally:
            await out.stop()
        return await self._ends()

    def _route(self, line: bytes) -> tuple[str, bytes | None]:
        """The topic and key a line goes to; unreadable lines still go (to the DLQ, later)."""
        topics = self.settings.input_topics
        try:
            data = json.loads(line)
            kind = data.get("type")
            key = str(data.get("customer_id", "")).encode() or None
        except (ValueError, AttributeError):
            return topics["click"], None
        return topics.get(kind, topics["click"]), key

    async def _ends(self) -> dict[tuple[str, int], int]:
        s = self.settings
        reader = consumer(s)
        await reader.start()
        try:
            tps = [
                TopicPartition(t, p) for t in s.input_topics.values() for p in range(s.partitions)
            ]
            ends = await reader.end_offsets(tps)
            return {(tp.topic, tp.partition): off for tp, off in ends.items()}
        finally:
            await reader.stop()

    async def declare(self, ends: dict[tuple[str, int], int]) -> None:
        """One replay declaration per partition, on the clock topic."""
        s = self.settings
        out = producer(s, acks="all")
        await out.start()
        try:
            for p in range(s.partitions):
                body = {
                    "kind": "replay",
                    "replay_id": self.replay_id,
                    "ends": {t: ends[(t, p)] for t in s.input_topics.values()},
                    "final": self.until,
                }
                await out.send_and_wait(s.clock_topic, value=json.dumps(body).encode(), partition=p)
        finally:
            await out.stop()

    async def wait_done(self, timeout: float, progress: Any = None) -> None:
        """Until every partition has reported the end of this replay."""
        s = self.settings
        status = consumer(
            s, s.replay_status_topic, auto_offset_reset="earliest", enable_auto_commit=False
        )
        await status.start()
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        try:
            while len(done) < s.partitions:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replay not finished after {timeout} s: {sorted(done)}")
                batch = await status.getmany(timeout_ms=500)
                for msgs in batch.values():
                    for msg in msgs:
                        body = json.loads(msg.value)
                        if body.get("replay_id") == self.replay_id:
                            done.add(int(body["partition"]))
                if progress is not None:
                    progress(len(done))
        finally:
            await status.stop()

    async def decisions(self) -> list[dict[str, Any]]:
        """Every decision of the replay, once per nudge_id, in a canonical order."""
        s = self.settings
        reader = consumer(s)
        await reader.start()
        try:
            tps = [TopicPartition(s.decisions_topic, p) for p in range(s.partitions)]
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)
            remaining = {tp for tp in tps if ends[tp] > 0}
            seen: dict[str, dict[str, Any]] = {}
            while remaining:
                batch = await reader.getmany(*remaining, timeout_ms=1000)
                for tp, msgs in batch.items():
                    for msg in msgs:
                        record = json.loads(msg.value)
                        seen.setdefault(record["nudge_id"], record)
                    if msgs and msgs[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await reader.stop()
        return sorted(
            seen.values(),
            key=lambda d: (d["customer_id"], d["decided_at"], d["ritual"], d["anchor"]),
        )


def security_env(settings: Settings) -> dict[str, str]:
    """The Kafka security settings as the `ENGAGE_` variables a replay worker reads."""
    env = {
        "ENGAGE_SECURITY_PROTOCOL": settings.security_protocol,
        "ENGAGE_SASL_MECHANISM": settings.sasl_mechanism,
    }
    optional = {
        "ENGAGE_SASL_USERNAME": settings.sasl_username,
        "ENGAGE_SASL_PASSWORD": (
            settings.sasl_password.get_secret_value() if settings.sasl_password else None
        ),
        "ENGAGE_SSL_CAFILE": settings.ssl_cafile,
        "ENGAGE_SSL_CERTFILE": settings.ssl_certfile,
        "ENGAGE_SSL_KEYFILE": settings.ssl_keyfile,
    }
    env.update({k: v for k, v in optional.items() if v is not None})
    return env


def canonical_lines(decisions: list[dict[str, Any]]) -> Iterator[str]:
    for record in decisions:
        yield json.dumps(record, sort_keys=True, separators=(",", ":"))


def run_replay(
    lines: Iterable[bytes],
    *,
    settings: Settings,
    workers: int = 1,
    until: int | None = None,
    rules_file: str | None = None,
    timeout: float = 600.0,
    console: Console | None = None,
    on_declared: Callable[[ReplayRun], None] | None = None,
) -> list[dict[str, Any]]:
    """Replay events (JSON lines) on the broker; returns the decisions. Used by tests too.

    `on_declared` runs once the declarations are out (the chaos suite kills and restarts a
    worker there); the replay then waits for completion as usual."""
    run = ReplayRun(settings, workers=workers, until=until, rules_file=rules_file)
    asyncio.run(ensure_topics(settings))
    run.start_workers()
    try:
        data = list(lines)
        ends = asyncio.run(run.produce(data))
        asyncio.run(run.declare(ends))
        if on_declared is not None:
            on_declared(run)
        if console is not None:
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("replaying partitions", total=settings.partitions)
                asyncio.run(run.wait_done(timeout, lambda n: bar.update(task, completed=n)))
        else:
            asyncio.run(run.wait_done(timeout))
        return asyncio.run(run.decisions())
    finally:
        run.stop_workers()


def summary_table(decisions: list[dict[str, Any]]) -> Table:
    counts = Counter((d["ritual"], d["status"]) for d in decisions)
    table = Table(title=f"{len(decisions)} decisions")
    table.add_column("ritual")
    for status in Status:
        table.add_column(status, justify="right")
    from stream.core.rituals import RITUALS

    names = dict.fromkeys(RITUALS)
    names.update(dict.fromkeys(sorted({d["ritual"] for d in decisions})))
    for ritual in names:
        row = [str(counts.get((ritual, st), 0)) for st in Status]
        table.add_row(ritual, *row)
    return table


def instant(text: str) -> int:
    """An RFC 3339 instant with an offset (`2026-03-01T00:00:00Z`) as epoch milliseconds; an
    argparse type, so a bad `--until` is a usage error."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an RFC 3339 instant, got {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"the instant needs an offset (Z or +01:00): {text!r}")
    return to_ms(moment)


def main(argv: list[str]) -> int:
    """`engage replay FILE`: 0 with the decisions, 1 on a Kafka failure, 2 on bad input."""
    parser = command_parser("replay", __doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("file", help="JSON lines of events (e.g. from `engage emit --out`)")
    parser.add_argument(
        "--until", type=instant, help="move every clock to this instant at the end (RFC 3339)"
    )
    parser.add_argument("--out", help="write the decisions here, one JSON object per line")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=None)
    parser.add_argument("--rules", help="rules file (default: the packaged rules)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    namespace = f"replay-{uuid.uuid4().hex[:8]}"
    overrides: dict[str, Any] = {"app_id": namespace, "topic_namespace": namespace}
    if args.partitions:
        overrides["partitions"] = args.partitions
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        return fail("replay", f"invalid configuration: {settings_problems(exc)}", EXIT_USAGE)
    try:  # the workers would read the rules file only after the topics exist: check it first
        load_rules(args.rules or settings.rules_file)
    except RulesError as exc:
        return fail("replay", exc, EXIT_USAGE)
    until = args.until
    try:
        with open(args.file, "rb") as fh:
            lines = [line.rstrip(b"\n") for line in fh if line.strip()]
    except OSError as exc:
        return fail("replay", f"cannot read {args.file}: {exc.strerror or exc}", EXIT_USAGE)
    console.print(f"replaying {len(lines)} events on {namespace} with {args.workers} worker(s)")
    started = time.monotonic()
    try:
        decisions = run_replay(
            lines,
            settings=settings,
            workers=args.workers,
            until=until,
            rules_file=args.rules,
            timeout=args.timeout,
            console=console,
        )
    except (KafkaError, KafkaAccessError, TopicMismatch, OSError) as exc:
        message = exc if isinstance(exc, TopicMismatch) else describe_error(exc, settings)
        print(f"engage replay: {message}", file=sys.stderr)
        return 1
    console.print(summary_table(decisions))
    console.print(f"done in {time.monotonic() - started:.1f} s")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            for line in canonical_lines(decisions):
                fh.write(line + "\n")
        console.print(f"wrote {args.out}")
    return 0
