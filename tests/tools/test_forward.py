"""`engage forward` delivers nudges to a webhook through its failures, at least once, signed,
to the right audience only, and never where a redirect points.

A real `python -m stream forward` process reads a real topic and POSTs to an HTTP receiver
run by the test on 127.0.0.1 that answers 503 to each nudge's first attempt and stalls past the
forwarder's timeout on the second; one nudge is refused for good (400) and must be
dead-lettered; a service-team nudge must never reach this customer webhook. Nothing may be
lost, and a nudge may arrive twice only under the same Idempotency-Key, each time with a valid
Standard Webhooks signature. A receiver answering 302 or 307 gets the nudge retried (never
followed to the host the redirect names) until its maximum age sends it to the forward DLQ.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import typing
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.nudges import Nudge
from stream.core.cloudevents import kafka_headers
from stream.core.decision import Decision
from stream.core.webhook import (
    AUDIENCES,
    backoff_s,
    decode_secret,
    seconds_left,
    signature,
    verdict,
)
from stream.tools.forward import ForwardConfig, _audiences
from stream.topic_names import forward_dlq_topic, forward_group, nudges_topic
from tests.harness import ROOT, read_all, unique, wait_for

PARTITIONS = 2
# A Standard Webhooks secret as a receiver's library would be given it (24 random bytes).
SECRET = "whsec_" + base64.b64encode(b"engage-forward-test-key!").decode()


def test_verdicts_and_backoff() -> None:
    assert [verdict(s) for s in (200, 204)] == ["delivered", "delivered"]
    assert [verdict(s) for s in (None, 500, 503, 408, 429, 302)] == ["retry"] * 6
    assert [verdict(s) for s in (400, 401, 404, 410, 422)] == ["refused"] * 5
    waits = [backoff_s(n, initial_s=0.5, max_s=4) for n in range(1, 7)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff_s(1, initial_s=0.5, max_s=30, retry_after_s=7) == 7


def test_standard_webhooks_signature() -> None:
    # The example of the Standard Webhooks specification: same secret, id, time and body.
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") == key  # the prefix is optional
    body = b'{"test": 2432232314}'
    sig = signature(key, msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330, body=body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    for bad in ("", "whsec_", "not base64!", "whsec_c2hvcnQ="):  # the last decodes to 5 bytes
        with pytest.raises(ValueError):
            decode_secret(bad)


def test_max_age_and_audiences() -> None:
    decided = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    later = datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)
    assert seconds_left(decided, now=later, max_age_s=60) == 30
    assert seconds_left(decided, now=later, max_age_s=10) == -20
    assert seconds_left(decided, now=later, max_age_s=None) == float("inf")
    assert seconds_left(None, now=later, max_age_s=10) == float("inf")
    # The audiences the forwarder knows are the ones a nudge can have.
    assert set(AUDIENCES) == set(typing.get_args(Nudge.model_fields["audience"].annotation))
    assert ForwardConfig(url="http://x", group="g").audiences == {"customer"}
    assert _audiences("customer, service_team") == {"customer", "service_team"}
    for bad in ("", "customers", "customer,everyone"):
        with pytest.raises(argparse.ArgumentTypeError):
            _audiences(bad)
    # Secrets stay out of reprs (and so out of logs and tracebacks).
    config = ForwardConfig(url="http://x", group="g", authorization="Bearer a1", secret=b"k3y")
    assert "a1" not in repr(config) and "k3y" not in repr(config)


def verify(headers: dict[str, str], raw: bytes) -> str:
    """What a receiver does (Standard Webhooks): check the signature; the message id."""
    msg_id, timestamp = headers["webhook-id"], int(headers["webhook-timestamp"])
    assert abs(time.time() - timestamp) < 300  # unix seconds, of the attempt
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    return msg_id


def nudge(
    i: int, ritual: str = "post_purchase_welcome", *, audience: str = "customer",
    decided_at: str = "2026-03-02T12:00:00Z",
) -> dict[str, Any]:  # fmt: skip
    customer, anchor = f"fwd-{i % 7}", f"order-{i}"
    return {
        "nudge_id": hashlib.sha256(f"{ritual}|{customer}|{anchor}".encode()).hexdigest(),
        "ritual": ritual,
        "rules_version": "test",
        "customer_id": customer,
        "anchor": anchor,
        "due_at": decided_at,
        "decided_at": decided_at,
        "status": "delivered",
        "reason": "eligible",
        "audience": audience,
        "category": "care" if audience == "customer" else "recovery",
        "promotional": False,
        "tz": "UTC",
        "explanation": {"order_id": anchor},
    }


class Receiver:
    """An HTTP endpoint that fails each nudge's first two attempts (503, then a stall)."""

    def __init__(self, refuse: set[str], stall_s: float) -> None:
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.accepted: list[tuple[str, bytes, dict[str, str]]] = []
        self.refused: list[str] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
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
            await admin.create_topics([NewTopic(nudges_topic(ns), PARTITIONS, 1)])
        finally:
            await admin.close()

    asyncio.run(create())
    yield ns


async def _produce(bootstrap: str, ns: str, records: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for r in records:
            headers = kafka_headers(msgspec.convert(r, Decision), namespace=ns, topic_kind="nudge")
            await producer.send_and_wait(
                nudges_topic(ns), json.dumps(r).encode(), key=r["customer_id"].encode(),
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
    # A service-team task among them: not for a customer webhook (default audience).
    team = nudge(99, "service_recovery", audience="service_team")
    asyncio.run(_produce(bootstrap, namespace, [*records[:6], team, *records[6:]]))
    group = forward_group(namespace)
    env = {
        **os.environ,
        "ENGAGE_BROKER": f"kafka://{bootstrap}",
        "ENGAGE_TOPIC_NAMESPACE": namespace,
        "ENGAGE_FORWARD_AUTHORIZATION": "Bearer test-token",
        "ENGAGE_WEBHOOK_SECRET": SECRET,
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
            topic = nudges_topic(namespace)
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

    # no loss, and every delivery is a nudge under its own idempotency key, signed
    accepted_ids = [key for key, _, _ in receiver.accepted]
    assert sorted(set(accepted_ids)) == sorted({r["nudge_id"] for r in records} - refused)
    assert receiver.attempts[team["nudge_id"]] == 0  # never sent, yet committed (offsets above)
    by_id = {r["nudge_id"]: r for r in records}
    for key, raw, headers in receiver.accepted:
        body = json.loads(raw)
        assert body == by_id[key]
        assert verify(headers, raw) == key
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
    dlq = read_all(bootstrap, forward_dlq_topic(namespace))
    assert len(dlq) == 1
    headers = dict(dlq[0].headers)
    assert json.loads(dlq[0].value)["nudge_id"] in refused
    assert headers["engage.reason"] == b"refused"
    assert headers["engage.message"] == b"HTTP 400 from the receiver"
    assert headers["engage.original_topic"] == nudges_topic(namespace).encode()
    assert headers["ce_id"].decode() in refused
    assert "Bearer" not in (tmp_path / "forward.log").read_text()


class Redirector:
    """A receiver that answers 302 or 307 to some nudges (pointing at `trap`) and 200 to the
    rest; `trap` records any request that reaches it, whatever the method."""

    def __init__(self, answers: dict[str, int], trap_url: str) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, Idempotency-Key)
        self.delivered: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                key = self.headers.get("Idempotency-Key", "")
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append((self.command, key))
                status = answers.get(key, 200)
                if status == 200:
                    with receiver.lock:
                        receiver.delivered.append(key)
                self.send_response(status)
                if status in (302, 307):
                    self.send_header("Location", trap_url)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Redirector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_redirects_are_never_followed_and_old_nudges_expire_to_the_dlq(
    stack: dict[str, str], namespace: str, tmp_path: Path
) -> None:
    bootstrap = stack["kafka"]
    # Decided "an hour from now" by the forwarder's clock: it cannot expire while it starts.
    first = nudge(1, decided_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    env = {
        **os.environ,
        "ENGAGE_BROKER": f"kafka://{bootstrap}",
        "ENGAGE_TOPIC_NAMESPACE": namespace,
        "ENGAGE_WEBHOOK_SECRET": SECRET,
        "ENGAGE_FORWARD_AUTHORIZATION": "Bearer not-for-the-trap",
    }
    log = (tmp_path / "forward.log").open("wb")
    trap = Redirector({}, "http://127.0.0.1:9/unused")
    max_age = 4.0
    with trap:
        # (a nudge_id does not depend on decided_at, set when the nudges are produced below)
        answers = {nudge(2)["nudge_id"]: 302, nudge(3)["nudge_id"]: 307}
        with Redirector(answers, trap.url.replace("/hook", "/elsewhere")) as receiver:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stream", "forward", "--url", receiver.url,
                 "--max-age", str(max_age), "--backoff-initial", "0.05", "--backoff-max", "0.2"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            try:

                def alive() -> None:
                    if proc.poll() is not None:
                        raise AssertionError((tmp_path / "forward.log").read_text())

                # A first nudge delivered: the forwarder is up, so the next ones get attempts
                # well within their maximum age.
                asyncio.run(_produce(bootstrap, namespace, [first]))
                wait_for(
                    lambda: alive() or first["nudge_id"] in receiver.delivered,
                    timeout=90,
                    what="the forwarder running",
                )
                # One partition sends in order: the second is decided later, so that it still
                # has attempts left after the first expired (should both share a partition).
                now = datetime.now(UTC)
                moved = nudge(2, decided_at=now.isoformat())
                temporary = nudge(3, decided_at=(now + timedelta(seconds=max_age)).isoformat())
                asyncio.run(_produce(bootstrap, namespace, [moved, temporary]))
                dlq_topic = forward_dlq_topic(namespace)
                wait_for(
                    lambda: alive() or len(read_all(bootstrap, dlq_topic)) >= 2,
                    timeout=60,
                    what="both redirected nudges dead-lettered",
                )
                topic = nudges_topic(namespace)
                want = {0: 0, 1: 0}
                for msg in read_all(bootstrap, topic):
                    want[msg.partition] = max(want[msg.partition], msg.offset + 1)
                wait_for(
                    lambda: (
                        asyncio.run(_committed(bootstrap, forward_group(namespace), topic)) == want
                    ),
                    timeout=30,
                    what="offsets committed after dead-lettering",
                )
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0
                log.close()

    # Nothing ever reached the host the redirects named; every request was a POST.
    assert trap.requests == []
    assert {method for method, _ in receiver.requests} == {"POST"}
    tries = Counter(key for _, key in receiver.requests)
    for redirected in (moved, temporary):
        assert tries[redirected["nudge_id"]] >= 2  # a 3xx is retried like a 5xx ...
        assert redirected["nudge_id"] not in receiver.delivered
    dlq = {json.loads(m.value)["nudge_id"]: dict(m.headers) for m in read_all(bootstrap, dlq_topic)}
    assert set(dlq) == {moved["nudge_id"], temporary["nudge_id"]}  # ... until it is too old
    for headers in dlq.values():
        assert headers["engage.reason"] == b"expired"
        assert headers["engage.original_topic"] == nudges_topic(namespace).encode()
    assert receiver.delivered == [first["nudge_id"]]
    assert "not-for-the-trap" not in (tmp_path / "forward.log").read_text()


def test_engage_topics_sets_the_forward_dlq_retention_also_on_an_existing_topic(
    stack: dict[str, str],
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    bootstrap, ns = stack["kafka"], unique("fdlq")
    dlq_topic = forward_dlq_topic(ns)

    async def create() -> None:  # as a forwarder started before any retention was set does
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(dlq_topic, PARTITIONS, 1)])
        finally:
            await admin.close()

    async def retention() -> str | None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, dlq_topic)]
            )
        finally:
            await admin.close()
        for resource in response.resources:
            for entry in resource[4]:  # (name, value, read_only, is_default, sensitive, ...)
                if entry[0] == "retention.ms":
                    return entry[1]
        return None

    asyncio.run(create())
    days = 3
    assert asyncio.run(retention()) != str(days * 86_400_000)
    out = subprocess.run(
        [sys.executable, "-m", "stream", "topics"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "ENGAGE_BROKER": f"kafka://{bootstrap}", "ENGAGE_APP_ID": ns,
             "ENGAGE_TOPIC_NAMESPACE": ns, "ENGAGE_PARTITIONS": str(PARTITIONS),
             "ENGAGE_DLQ_RETENTION_DAYS": str(days)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"retention of {dlq_topic}: {days} days" in out.stdout
    wait_for(  # the broker applies a config change from its metadata log, a moment later
        lambda: asyncio.run(retention()) == str(days * 86_400_000),
        timeout=10,
        what="the forward DLQ's retention.ms",
    )


@pytest.mark.parametrize(
    ("secret", "args", "needle"),
    [
        (None, [], "set ENGAGE_WEBHOOK_SECRET"),
        ("not base64!", [], "ENGAGE_WEBHOOK_SECRET must be base64"),
        (SECRET, ["--audience", "everyone"], "--audience"),
        (SECRET, ["--max-age", "0"], "--max-age"),
    ],
)
def test_forward_refuses_to_start_unsigned_or_misconfigured(
    secret: str | None, args: list[str], needle: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ENGAGE_WEBHOOK_SECRET"}
    env["ENGAGE_BROKER"] = "kafka://127.0.0.1:1"  # never reached: it stops before Kafka
    if secret is not None:
        env["ENGAGE_WEBHOOK_SECRET"] = secret
    out = subprocess.run(
        [sys.executable, "-m", "stream", "forward", "--url", "http://127.0.0.1:1/", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr
    if secret:
        assert secret not in out.stderr
