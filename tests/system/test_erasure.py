"""Erasure and access on real workers (SPEC §4 Erasure, SPEC §6): `engage forget` leaves no
trace of a customer in the table, its changelog, the due index, Redis or HTTP, on any worker
and after a restart; profiles and KPIs need the bearer token, probes do not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from schemas.erasure import ErasureReceipt
from stream.serving.projector import SEGMENT_KEYS, profile_key
from tests.factory import event
from tests.harness import ROOT, produce_events, read_all, unique, wait_for

pytestmark = pytest.mark.integration

TOKEN = "s3cret-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def rules_file(tmp_path: Path) -> Path:
    """A check-in 20 s after a purchase; no holdout, no quiet hours, no cap."""
    path = tmp_path / "rules.yaml"
    path.write_text(
        """
version: test-erasure
rituals:
  post_purchase_welcome: {holdout_percent: 0}
  three_days_later: {holdout_percent: 0, delay: 20s}
  we_noticed: {holdout_percent: 0}
  anniversary: {holdout_percent: 0}
  referral_invite: {holdout_percent: 0}
  loyalty_milestone: {holdout_percent: 0}
guardrails:
  quiet_hours: {enabled: false}
  frequency_cap: {max_delivered: 100, max_marketing: 100}
"""
    )
    return path


@pytest.fixture
def redis_url(stack: dict[str, str]) -> str:
    """Database 7 of the stack's Redis (customer ids are unique per test: no flush needed)."""
    parts = urlsplit(stack.get("redis", "redis://127.0.0.1:6379/0"))
    return urlunsplit(parts._replace(path="/7"))


def decisions(worker: Any) -> list[dict[str, Any]]:
    return [
        json.loads(m.value) for m in read_all(worker.bootstrap, worker.topic("nudge-decisions"))
    ]


def forget(worker: Any, *customer_ids: str) -> list[dict[str, Any]]:
    env = {**os.environ, **worker.env}
    out = subprocess.run(
        [sys.executable, "-m", "stream", "forget", *customer_ids, "--wait", "--timeout", "60"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.timeout(300)
def test_forget_erases_everywhere_and_for_good(
    make_worker: Any, tmp_path: Path, redis_url: str
) -> None:
    env = {
        "ENGAGE_RULES_FILE": str(rules_file(tmp_path)),
        "ENGAGE_REDIS_URL": redis_url,
        "ENGAGE_API_TOKEN": TOKEN,
    }
    first = make_worker(**env).start()
    second = make_worker(app_id=first.app_id, namespace=first.namespace, **env).start()
    workers = (first, second)
    gone, kept = unique("gone"), unique("kept")
    now = datetime.now(UTC).isoformat()
    produce_events(
        first.bootstrap,
        first.namespace,
        [
            event("purchase", gone, occurred_at=now, order_id="g-1"),
            event("purchase", kept, occurred_at=now, order_id="k-1"),
        ],
    )
    wait_for(
        lambda: all(w.profile(gone, AUTH) and w.profile(kept, AUTH) for w in workers),
        timeout=60,
        what="both profiles on both workers",
    )
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.exists(profile_key(gone)), timeout=10, what="the Redis profile")
    wait_for(  # the purchase has reached ritual time: its check-in is a pending timer now
        lambda: any(d["customer_id"] == gone for d in decisions(first)),
        timeout=30,
        what="the welcome",
    )

    [receipt] = forget(first, gone)
    ErasureReceipt.model_validate(receipt)
    assert receipt["customer_id"] == gone
    deleted = receipt["deleted"]
    assert deleted["state"] is True and deleted["redis_profile"] is True
    assert deleted["timers"] >= 2  # the pending check-in and the inactivity timer at least
    assert set(receipt) == {"request_id", "customer_id", "requested_at", "erased_at", "deleted"}

    # HTTP: unknown on both workers (one of them routes to the other).
    for w in workers:
        assert w.get(f"/customers/{gone}", AUTH)[0] == 404
        assert w.profile(kept, AUTH) is not None
    # The changelog's last word on the customer is a tombstone.
    last = {m.key: m.value for m in read_all(first.bootstrap, first.changelog)}
    assert last[gone.encode()] is None and last[kept.encode()] is not None
    # Redis: no profile, in no segment.
    wait_for(lambda: not client.exists(profile_key(gone)), timeout=10, what="Redis cleared")
    assert not any(client.sismember(key, gone) for key in SEGMENT_KEYS)

    # The pending check-in is never decided: the other customer's, due at the same instant, is.
    wait_for(
        lambda: any(
            d["ritual"] == "three_days_later" and d["customer_id"] == kept for d in decisions(first)
        ),
        timeout=60,
        what="the kept customer's check-in",
    )
    assert not [
        d
        for d in decisions(first)
        if d["customer_id"] == gone and d["ritual"] == "three_days_later"
    ]

    # A restarted worker does not bring the customer back; a later event starts a new profile.
    second.stop()
    first.stop()
    third = make_worker(app_id=first.app_id, namespace=first.namespace, **env).start()
    wait_for(lambda: third.profile(kept, AUTH), timeout=60, what="the kept profile recovered")
    assert third.get(f"/customers/{gone}", AUTH)[0] == 404
    produce_events(
        third.bootstrap,
        third.namespace,
        [event("click", gone, occurred_at=datetime.now(UTC).isoformat())],
    )
    fresh = wait_for(lambda: third.profile(gone, AUTH), timeout=30, what="a new profile")
    assert fresh["counts"] == {"click": 1} and fresh["orders"] == 0


@pytest.mark.timeout(240)
def test_token_guards_profiles_and_kpis_and_routing_uses_the_advertised_url(
    make_worker: Any,
) -> None:
    def env(port: int) -> dict[str, str]:
        return {
            "ENGAGE_API_TOKEN": TOKEN,
            "ENGAGE_REDIS_ENABLED": "false",
            "ENGAGE_WEB_HOST": "0.0.0.0",  # binds everything, as in a container ...
            "ENGAGE_WEB_ADVERTISED_URL": f"http://localhost:{port}",  # ... advertises a name
        }

    first = make_worker()
    first.extra_env.update(env(first.web_port))
    first.start()
    second = make_worker(app_id=first.app_id, namespace=first.namespace)
    second.extra_env.update(env(second.web_port))
    second.start()
    customers = [unique("tok") for _ in range(8)]  # spread over the partitions of both workers
    now = datetime.now(UTC).isoformat()
    produce_events(
        first.bootstrap, first.namespace, [event("click", c, occurred_at=now) for c in customers]
    )
    seen: dict[str, Any] = {}

    def fetched(w: Any, c: str) -> bool:
        seen[c] = w.get(f"/customers/{c}", AUTH)
        return seen[c][0] == 200

    for w in (first, second):
        for c in customers:  # every profile through every worker: half of them routed
            wait_for(
                lambda w=w, c=c: fetched(w, c), timeout=60, what=f"{c} via {w.web_port}: {seen}"
            )
        assert w.get(f"/customers/{customers[0]}")[0] == 401
        assert w.get(f"/customers/{customers[0]}", {"Authorization": "Bearer wrong"})[0] == 401
        assert w.get("/kpis")[0] == 401
        assert w.get("/kpis", AUTH)[0] == 200
        for probe in ("/metrics", "/healthz", "/readyz"):
            assert w.get(probe)[0] == 200, probe
