"""Security settings on every client (SPEC §7), against the local stack's SASL_PLAINTEXT listener
and a password-protected Redis: the worker, `engage topics`, `engage replay`, `engage emit` and
`engage project rebuild` work with the right credentials and fail with one clear line with
wrong ones. The listener's address and credentials come from the stack fixture."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from stream.serving.projector import profile_key
from tests.factory import event
from tests.harness import ROOT, Worker, free_port, produce_events, unique, wait_for

pytestmark = pytest.mark.integration
REFUSED = "refused the credentials"


@pytest.fixture(scope="module")
def sasl(stack: dict[str, str]) -> dict[str, str]:
    if "kafka_sasl" not in stack:
        pytest.skip("the broker under test has no SASL listener (ENGAGE_TEST_BOOTSTRAP)")
    return stack


def sasl_env(sasl: dict[str, str], ns: str, *, password: str | None = None) -> dict[str, str]:
    return {
        "ENGAGE_BROKER": f"kafka://{sasl['kafka_sasl']}",
        "ENGAGE_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "ENGAGE_SASL_MECHANISM": sasl["kafka_sasl_mechanism"],
        "ENGAGE_SASL_USERNAME": sasl["kafka_sasl_username"],
        "ENGAGE_SASL_PASSWORD": password or sasl["kafka_sasl_password"],
        "ENGAGE_APP_ID": ns,
        "ENGAGE_TOPIC_NAMESPACE": ns,
        "ENGAGE_PARTITIONS": "2",
    }


def engage(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def assert_one_clear_line(result: subprocess.CompletedProcess, *, needle: str = REFUSED) -> None:
    """Exit status 1, and stderr ends with one line naming the problem (no traceback)."""
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert needle in last, result.stderr[-2000:]
    assert "password=" not in result.stderr.lower()


@pytest.fixture(scope="module")
def redis_with_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A second redis-server (the stack's own binary) with requirepass, on a free port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (devstack installs it)")
    port, password = free_port(), unique("pw")
    workdir = tmp_path_factory.mktemp("redis-auth")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
         "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip

    def up() -> bool:
        try:
            return bool(redis.Redis(port=port, password=password, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    try:
        wait_for(up, timeout=20, what="redis-server with requirepass")
        yield {
            "url": f"redis://:{password}@127.0.0.1:{port}/0",
            "user_url": f"redis://default:{password}@127.0.0.1:{port}/0",
            "no_auth_url": f"redis://127.0.0.1:{port}/0",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.timeout(300)
def test_worker_topics_and_rebuild_through_sasl_and_redis_auth(
    sasl: dict[str, str], redis_with_password: dict[str, str], tmp_path: Path
) -> None:
    ns = unique("sasl")
    env = sasl_env(sasl, ns)
    ok = engage("topics", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "topics ready" in ok.stdout
    assert_one_clear_line(engage("topics", env=sasl_env(sasl, ns, password="wrong")))

    worker = Worker(
        bootstrap=sasl["kafka_sasl"], app_id=ns, namespace=ns, partitions=2,
        log_path=tmp_path / "worker.log",
        extra_env={**env, "ENGAGE_REDIS_URL": redis_with_password["user_url"]},
    )  # fmt: skip
    try:
        worker.start()
        customer = unique("alice")
        now = datetime.now(UTC).isoformat()
        produce_events(sasl["kafka"], ns, [event("purchase", customer, occurred_at=now)])
        wait_for(lambda: worker.profile(customer), timeout=60, what="a profile via SASL")
        client = redis.Redis.from_url(redis_with_password["url"])
        wait_for(lambda: client.exists(profile_key(customer)), timeout=10, what="Redis with AUTH")

        client.delete(profile_key(customer))
        rebuilt = engage(
            "project", "rebuild", env={**env, "ENGAGE_REDIS_URL": redis_with_password["url"]}
        )
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert client.exists(profile_key(customer))
        assert_one_clear_line(
            engage("project", "rebuild", env={
                **sasl_env(sasl, ns, password="wrong"),
                "ENGAGE_REDIS_URL": redis_with_password["url"],
            })
        )  # fmt: skip
        assert_one_clear_line(
            engage(
                "project", "rebuild",
                env={**env, "ENGAGE_REDIS_URL": redis_with_password["no_auth_url"]},
            ),
            needle="Redis needs a password",
        )  # fmt: skip
    finally:
        worker.stop()

    bad = Worker(
        bootstrap=sasl["kafka_sasl"], app_id=ns, namespace=ns, partitions=2,
        log_path=tmp_path / "bad-worker.log",
        extra_env={**sasl_env(sasl, ns, password="wrong"), "ENGAGE_REDIS_ENABLED": "false"},
    )  # fmt: skip
    with pytest.raises(AssertionError, match="worker exited"):
        bad.start(timeout=60)
    assert bad.proc is not None and bad.proc.wait(timeout=10) == 1
    assert REFUSED in bad.log_tail(3)


@pytest.mark.timeout(300)
def test_replay_and_emit_through_sasl(sasl: dict[str, str], tmp_path: Path) -> None:
    ns = unique("sasl-tools")
    env = sasl_env(sasl, ns)
    data = tmp_path / "events.jsonl"
    cid = unique("bob")
    events = [
        event("purchase", cid, occurred_at="2026-01-05T12:00:00Z", order_id="o1"),
        event("consent", cid, occurred_at="2026-01-06T12:00:00Z", scope="all", status="opted_out"),
    ]
    data.write_text("".join(json.dumps(e) + "\n" for e in events))
    out = tmp_path / "decisions.jsonl"
    replay = engage(
        "replay", str(data), "--partitions", "2", "--until", "2026-02-01T00:00:00Z",
        "--out", str(out), env=env, timeout=240,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr[-3000:]
    decided: list[dict[str, Any]] = [json.loads(line) for line in out.read_text().splitlines()]
    by_ritual = {d["ritual"]: d["status"] for d in decided if d["customer_id"] == cid}
    assert by_ritual["three_days_later"] == "suppressed"  # due after the opt-out
    assert by_ritual["post_purchase_welcome"] in {"delivered", "held_out"}  # before it
    assert_one_clear_line(
        engage("replay", str(data), "--partitions", "2", env=sasl_env(sasl, ns, password="no"))
    )

    assert engage("topics", env=env).returncode == 0
    emit = [
        "emit", "--customers", "3", "--days", "1", "--start", "2026-01-01T00:00:00Z",
        "--speed", "10000000", "--no-feedback", "--quiet", "--seed", "3",
    ]  # fmt: skip
    sent = engage(*emit, env=env)
    assert sent.returncode == 0, sent.stderr[-3000:]
    assert_one_clear_line(engage(*emit, env=sasl_env(sasl, ns, password="wrong")))
