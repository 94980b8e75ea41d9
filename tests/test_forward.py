"""`engage forward` delivers nudges to a webhook through its failures, at least once.

A real `python -m stream forward` process reads a real topic and POSTs to an HTTP receiver
run by the test on 127.0.0.1 that answers 503 to each nudge's first attempt and stalls past the
forwarder's timeout on the second; one nudge is refused for good (400) and must be
dead-lettered. Nothing may be lost, and a nudge may arrive twice only under the same
Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.core.cloudevents import kafka_headers
from stream.core.webhook import backoff_s, verdict
from tests.harness import ROOT, read_all, unique, wait_for

PARTITIONS = 2


def test_verdicts_and_backoff() -> None:
    assert [verdict(s) for s in (200, 204)] == ["delivered", "delivered"]
    assert [verdict(s) for s in (None, 500, 503, 408, 429, 302)] == ["retry"] * 6
    assert [verdict(s) for s in (400, 401, 404, 410, 422)] == ["refused"] * 5
    waits = [backoff_s(n, initial_s=0.5, max_s=4) for n in range(1, 7)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff_s(1, initial_s=0.5, max_s=30, retry_after_s=7) == 7


def nudge(i: int, ritual: str = "post_purchase_welcome") -> dict[str, Any]:
    customer, anchor = f"fwd-{i % 7}", f"order-{i}"
    return {
        "nudge_id": hashlib.sha256(f"{ritual}|{customer}|{anchor}".encode()).hexdigest(),
        "ritual": ritual,
        "rules_version": "test",
        "customer_id": customer,
        "anchor": anchor,
        "due_at": "2026-03-02T12:00:00Z",
        "decided_at": "2026-03-02T12:00:00Z",
        "status": "delivered",
        "reason": "eligible",
        "audience": "customer",
        "category": "care",
        "promotional": False,
        "tz": "UTC",
        "explanation": {"order_id": anchor},
    }


class Receiver:
    """An HTTP endpoint that fails each nudge's first two attempts (503, then a stall)."""

    def __init__(self, refuse: set[str], stall_s: float) -> None:
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.accepted: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.refused: list[str] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self.headers.get("Idempotency-Key", "")
                with receiver.lock:
                    receiver.attempts[key] += 1
                    attempt = receiver.attempts[key]
                if key in refuse:
                    receiver.refused.append(key)
                    return self._answer(400)
                if attempt == 1:
                    return self._answer(503)
                if attempt == 2:  # longer than the forwarder's timeout: it gives up and retries
                    receiver.release.wait(stall_s)
                    return self._answer(503)
                with receiver.lock:
                    receiver.accepted.append((key, body, dict(self.headers)))
                return self._answer(200)

            def _answer(self, status: int) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the forwarder timed out and closed the connection
                    pass

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def namespace(stack: dict[str, str]) -> Iterator[str]:
    ns = unique("fwd")
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack["kafka"])
        await admin.start()
        try:
            await admin.create_topics([NewTopic(f"{ns}.nudges", PARTITIONS, 1)])
        finally:
            await admin.close()

    asyncio.run(create())
    yield ns


async def _produce(bootstrap: str, ns: str, records: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for r in records:
            headers = kafka_headers(r, namespace=ns, topic_kind="nudge")
            await producer.send_and_wait(
                f"{ns}.nudges", json.dumps(r).encode(), key=r["customer_id"].encode(),
                headers=headers,
            )  # fmt: skip
    finally:
        await producer.stop()


async def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        out = {}
        for p in range(PARTITIONS):
            offset = await consumer.committed(TopicPartition(topic, p))
            out[p] = offset or 0
        return out
    finally:
        await consumer.stop()


def test_forwarder_delivers_through_failures_and_dead_letters_refusals(
    stack: dict[str, str], namespace: str, tmp_path: Path
) -> None:
    bootstrap = stack["kafka"]
    records = [nudge(i) for i in range(12)]
    refused = {records[5]["nudge_id"]}
    asyncio.run(_produce(bootstrap, namespace, records))
    group = f"{namespace}.forward"
    env = {
        **os.environ,
        "ENGAGE_BROKER": f"kafka://{bootstrap}",
        "ENGAGE_TOPIC_NAMESPACE": namespace,
        "ENGAGE_FORWARD_AUTHORIZATION": "Bearer test-token",
    }
    log = (tmp_path / "forward.log").open("wb")
    with Receiver(refused, stall_s=5.0) as receiver:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "forward", "--url", receiver.url, "--timeout",
             "0.5", "--backoff-initial", "0.05", "--backoff-max", "0.2"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:

            def done() -> bool:
                if proc.poll() is not None:
                    raise AssertionError((tmp_path / "forward.log").read_text())
                return len(receiver.accepted) >= len(records) - 1 and bool(receiver.refused)

            wait_for(done, timeout=90, what="every nudge delivered")
            topic = f"{namespace}.nudges"
            want = {0: 0, 1: 0}
            for msg in read_all(bootstrap, topic):
                want[msg.partition] = max(want[msg.partition], msg.offset + 1)
            wait_for(
                lambda: asyncio.run(_committed(bootstrap, group, topic)) == want,
                timeout=30,
                what="offsets committed after delivery",
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            log.close()

    # no loss, and every delivery is a nudge under its own idempotency key
    accepted_ids = [key for key, _, _ in receiver.accepted]
    assert sorted(set(accepted_ids)) == sorted({r["nudge_id"] for r in records} - refused)
    by_id = {r["nudge_id"]: r for r in records}
    for key, body, headers in receiver.accepted:
        assert body == by_id[key]
        assert headers["ce-id"] == key == body["nudge_id"]
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-type"] == "io.engage.nudge.delivered"
        assert headers["ce-source"] == f"urn:engage:{namespace}"
        assert headers["ce-time"] == body["decided_at"]
        assert headers["Content-Type"] == "application/json"
        assert headers["Authorization"] == "Bearer test-token"
    assert all(receiver.attempts[k] >= 3 for k in accepted_ids)  # 503 and timeout retried
    # the refusal was tried once and dead-lettered with its reason
    assert receiver.attempts[next(iter(refused))] == 1
    dlq = read_all(bootstrap, f"{namespace}.forward-dlq")
    assert len(dlq) == 1
    headers = dict(dlq[0].headers)
    assert json.loads(dlq[0].value)["nudge_id"] in refused
    assert headers["engage.reason"] == b"refused"
    assert headers["engage.message"] == b"HTTP 400 from the receiver"
    assert headers["engage.original_topic"] == f"{namespace}.nudges".encode()
    assert headers["ce_id"].decode() in refused
    assert "Bearer" not in (tmp_path / "forward.log").read_text()
