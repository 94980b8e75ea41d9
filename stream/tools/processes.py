"""Real workers as subprocesses and real Kafka clients, for benchmarks and tests alike.

Why here: `bench/` and `tests/` both start `python -m stream worker` processes, produce with
aiokafka and read results back from the topics a worker writes. A benchmark is not a test, so
it must not import `tests`; this module is the shared part. It lives under ``stream.tools``
(the layer of programs that drive a running worker from outside, like devstack and probe)
because it is an importable part of the package: it works the same from a source tree and
from an installed package, needs no pytest, and imports nothing from ``tests``. Test-only
fixtures stay in tests/ (``tests/harness.py`` re-exports these names for the tests).

Nothing here mocks Kafka: each caller gives a worker its own app id and topic namespace (so
runs never see each other's data). Every wait polls a condition with a deadline; none sleeps
to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import stream
from stream.adapter.faust_private import refresh_metadata
from stream.core.state import CustomerState, decode
from stream.topic_names import customers_changelog, namespaced

# The source tree the imported `stream` package comes from: a worker started from here runs the
# same code as its caller (a worktree, a checkout or site-packages).
ROOT = Path(stream.__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, so parallel workers never collide on a fixed one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    probe: Callable[[], T | None], *, timeout: float, interval: float = 0.2, what: str = ""
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or probe}: {last!r}")


@dataclass
class Worker:
    """One `engage worker` process with its own settings."""

    bootstrap: str
    app_id: str
    namespace: str
    log_path: Path
    partitions: int = 4
    web_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    root: Path = ROOT  # the source tree the worker runs from (a benchmark may run another)

    @property
    def env(self) -> dict[str, str]:
        """The process environment: this worker's settings over the caller's."""
        return {
            **os.environ,
            "ENGAGE_BROKER": f"kafka://{self.bootstrap}",
            "ENGAGE_APP_ID": self.app_id,
            "ENGAGE_TOPIC_NAMESPACE": self.namespace,
            "ENGAGE_PARTITIONS": str(self.partitions),
            "ENGAGE_WEB_PORT": str(self.web_port),
            "ENGAGE_DATA_DIR": str(self.log_path.parent / f"data-{self.app_id}"),
            **self.extra_env,
        }

    def topic(self, suffix: str) -> str:
        """The full name of one of this worker's topics (namespace prefix added)."""
        return namespaced(self.namespace, suffix)

    @property
    def changelog(self) -> str:
        """The customer table's changelog topic, where `table_state` reads the state."""
        return customers_changelog(self.app_id)

    def start(self, timeout: float = 90.0) -> Worker:
        """Start the process and return once /readyz answers 200 (fails at the deadline)."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker"],
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.ready, timeout=timeout, what=f"worker {self.app_id} /readyz")
        return self

    def alive(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """GET `path` from the worker's web server: (status, body), error statuses included."""
        url = f"http://127.0.0.1:{self.web_port}{path}"
        req = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def ready(self) -> bool:
        """Whether /readyz answers 200; raises if the process died (no point waiting on)."""
        if not self.alive():
            raise AssertionError(f"worker exited: {self.log_tail()}")
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def profile(
        self, customer_id: str, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | None:
        """The customer's profile from the worker's HTTP API, None unless it answers 200."""
        status, body = self.get(f"/customers/{customer_id}", headers)
        return json.loads(body) if status == 200 else None

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, label_text = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL it if it outlives `timeout` seconds."""
        if not self.alive():
            return
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the worker's log, for failure messages."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def unique(prefix: str) -> str:
    """`prefix` plus a random suffix: app ids and topic namespaces no other run shares."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- Kafka clients ----------------------------------------------------------------------------


async def _produce(bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=2 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(t, value=v, key=k) for t, k, v in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce(bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes]]) -> None:
    """Send (topic, key, value) messages in order and wait until all are acknowledged."""
    asyncio.run(_produce(bootstrap, list(messages)))


async def _read_all(bootstrap: str, topic: str) -> list[Any]:
    # read_committed: an exactly_once worker's aborted writes are not part of the topic
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await refresh_metadata(consumer)
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for msgs in batch.values():
                out.extend(msgs)
            # The position, not the last record's offset: a transaction's commit marker (an
            # exactly_once worker's topics) takes an offset and is never delivered.
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every committed message currently in `topic`, all partitions, from the beginning."""
    return asyncio.run(_read_all(bootstrap, topic))


def table_state(bootstrap: str, changelog: str) -> dict[str, CustomerState]:
    """The latest state per customer, read from the table's changelog topic."""
    latest: dict[str, CustomerState] = {}
    for msg in read_all(bootstrap, changelog):
        if msg.value is not None:
            latest[msg.key.decode()] = decode(msg.value)
    return latest
