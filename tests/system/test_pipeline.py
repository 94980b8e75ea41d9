"""The ingest-and-fold worker against the real broker (SPEC §1, §3).

Each test starts real `engage worker` processes, produces real Kafka messages, and reads the
results back from the topics the worker writes: the DLQ and the table's changelog.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stream.core.profile import view
from stream.core.state import to_ms
from stream.topic_names import dlq_topic, input_topic
from tests.factory import T0, event, raw
from tests.harness import produce, produce_events, read_all, table_state, wait_for

pytestmark = pytest.mark.integration

AS_OF = to_ms(T0 + timedelta(days=20))


def folded(bootstrap: str, changelog: str, expected: dict[str, int]) -> Any:
    """A probe: the changelog's states once every customer has its expected event count."""

    def probe() -> Any:
        states = table_state(bootstrap, changelog)
        counts = {c: sum(states[c].counts.values()) for c in expected if c in states}
        return states if counts == expected else None

    return probe


def every_type(customer: str) -> list[dict[str, Any]]:
    return [
        event("click", customer, 0, action="email_click", nudge_id="n-1", tz="Europe/Berlin"),
        event("click", customer, 0.1, action="search", session_id="s1", dwell_ms=1200),
        event("purchase", customer, 1, order_id="o-1", amount="40.00", currency="EUR", items=2),
        event("purchase", customer, 2, order_id="o-2", amount="20.50", currency="EUR", items=1),
        event("review", customer, 3, order_id="o-1", rating=4, channel="site"),
        event("support_contact", customer, 4, ticket_id="t-1", status="opened", complaint=True),
        event("support_contact", customer, 5, ticket_id="t-1", status="resolved", complaint=True),
        event("survey", customer, 6, survey="nps", score=9),
        event("survey", customer, 6.5, survey="csat", score=5),
        event("survey", customer, 6.6, survey="ces", score=6),
        event("loyalty", customer, 7, action="joined"),
        event("loyalty", customer, 7.1, action="points_earned", points=250),
        event("loyalty", customer, 7.2, action="tier_changed", tier="silver"),
        event("loyalty", customer, 7.3, action="referral_sent"),
    ]


def test_events_of_every_type_fold_into_the_profile(make_worker, bootstrap: str) -> None:
    worker = make_worker().start()
    produce_events(bootstrap, worker.namespace, every_type("alice"))
    states = wait_for(
        folded(bootstrap, worker.changelog, {"alice": 14}), timeout=60, what="alice folded"
    )
    p = view(states["alice"], AS_OF)
    expected = {
        "customer_id": "alice",
        "first_seen": "2026-03-02T12:00:00Z",
        "last_seen": "2026-03-09T19:12:00Z",
        "tz": "Europe/Berlin",
        "counts": {
            "click": 2,
            "loyalty": 4,
            "purchase": 2,
            "review": 1,
            "support_contact": 2,
            "survey": 3,
        },
        "click_actions": {"email_click": 1, "search": 1},
        "active_days_7d": 0,
        "active_days_30d": 8,
        "orders": 2,
        "currency": "EUR",
        "revenue": "60.50",
        "revenue_by_currency": {"EUR": "60.50"},
        "average_order_value": "30.25",
        "first_purchase_at": "2026-03-03T12:00:00Z",
        "last_purchase_at": "2026-03-04T12:00:00Z",
        "clv_estimate": "181.50",
        "nps_last": 9,
        "nps_category": "promoter",
        "csat_last": 5,
        "ces_last": 6,
        "reviews": 1,
        "average_rating": 4.0,
        "open_complaints": 0,
        "complaints_total": 1,
        "complaints_resolved": 1,
        "first_contact_resolutions": 0,
        "loyalty_member": True,
        "tier": "silver",
        "points": 250,
        "referrals_sent": 1,
        "referrals_converted": 0,
        "prompted_interactions": 1,
        "unprompted_interactions": 1,
        "sentiment": "positive",  # nps +1, review +1, csat +1, complaint -1: mean 0.5
        "lifecycle_stage": "new",
    }
    for key, value in expected.items():
        assert p[key] == value, key
    # The same profile through the worker's HTTP API (read at its own clock).
    http = worker.profile("alice")
    assert http is not None
    assert http["orders"] == 2 and http["revenue"] == "60.50" and http["tier"] == "silver"
    assert worker.profile("nobody") is None


def test_bad_messages_go_to_the_dlq_and_good_ones_around_them_are_folded(
    make_worker, bootstrap: str
) -> None:
    worker = make_worker().start()
    ns = worker.namespace
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    good = [event("click", "bob", d / 10) for d in range(7)]
    bad: list[tuple[str, str, bytes, bytes]] = [
        ("malformed_json", input_topic(ns, "click"), b"bob", b'{"type": "click", oops'),
        (
            "schema_violation",
            input_topic(ns, "review"),
            b"bob",
            raw(event("review", "bob", rating=9)),
        ),
        (
            "unknown_type",
            input_topic(ns, "click"),
            b"bob",
            raw({**event("click", "bob"), "type": "teleport"}),
        ),
        ("key_mismatch", input_topic(ns, "click"), b"mallory", raw(event("click", "bob"))),
        (
            "future_timestamp",
            input_topic(ns, "click"),
            b"bob",
            raw(event("click", "bob", occurred_at=future)),
        ),
        (
            "oversized",
            input_topic(ns, "review"),
            b"bob",
            raw(event("review", "bob", text="x" * 70_000)),
        ),
    ]
    messages: list[tuple[str, bytes, bytes]] = []
    for i, (_, topic, key, value) in enumerate(bad):
        messages.append((input_topic(ns, "click"), b"bob", raw(good[i])))
        messages.append((topic, key, value))
    messages.append((input_topic(ns, "click"), b"bob", raw(good[6])))
    produce(bootstrap, messages)

    def dlq_full() -> list[Any] | None:
        msgs = read_all(bootstrap, dlq_topic(ns))
        return msgs if len(msgs) >= len(bad) else None

    dlq = wait_for(dlq_full, timeout=60, what="six DLQ messages")
    assert len(dlq) == len(bad)
    by_reason = {dict(m.headers)["engage.reason"].decode(): m for m in dlq}
    assert sorted(by_reason) == sorted(r for r, *_ in bad)
    offsets = set()
    for reason, topic, key, value in bad:
        msg = by_reason[reason]
        headers = dict(msg.headers)
        assert msg.key == key, reason
        assert msg.value == value, reason  # the original bytes, unchanged
        assert headers["engage.original_topic"].decode() == topic
        assert int(headers["engage.original_partition"]) in range(worker.partitions)
        offsets.add((topic, int(headers["engage.original_offset"])))
        assert int(headers["engage.original_timestamp"]) > 0
        assert headers["engage.message"]
        assert b"x" * 100 not in headers["engage.message"]  # no payload in the message
    assert len(offsets) == len(bad)

    states = wait_for(folded(bootstrap, worker.changelog, {"bob": 7}), timeout=60, what="bob")
    assert states["bob"].counts == {"click": 7}
    assert "mallory" not in states
    assert worker.alive()
    assert worker.get("/healthz")[0] == 200
    for reason, *_ in bad:
        assert worker.metric("engage_dlq_messages_total", reason=reason) == 1.0, reason
    assert worker.metric("engage_events_processed_total", outcome="folded") == 7.0


def test_the_same_event_twice_is_folded_once(make_worker, bootstrap: str) -> None:
    worker = make_worker().start()
    purchase = event("purchase", "carol", 1, amount="15.00")
    click = event("click", "carol", 2)
    produce_events(bootstrap, worker.namespace, [purchase, purchase, click, purchase])
    wait_for(
        lambda: worker.metric("engage_events_processed_total") >= 4,
        timeout=60,
        what="four events handled",
    )
    states = table_state(bootstrap, worker.changelog)
    assert states["carol"].orders == 1
    assert states["carol"].counts == {"purchase": 1, "click": 1}
    assert worker.metric("engage_duplicate_events_total", type="purchase") == 2.0


def test_restarted_worker_recovers_state_from_the_changelog(make_worker, bootstrap: str) -> None:
    env: dict[str, str] = {}
    first = make_worker(**env).start()
    customers = [f"dave-{i}" for i in range(20)]
    produce_events(
        bootstrap, first.namespace, [event("purchase", c, 1, amount="7.00") for c in customers]
    )
    wait_for(
        folded(bootstrap, first.changelog, dict.fromkeys(customers, 1)),
        timeout=60,
        what="first purchases",
    )
    first.stop()
    assert not first.alive()

    second = make_worker(app_id=first.app_id, namespace=first.namespace, **env).start()
    # Untouched since the restart: served from the recovered table alone.
    recovered = [second.profile(c) for c in customers[1:]]
    assert all(p is not None and p["orders"] == 1 for p in recovered), recovered
    # Touched after the restart: the new event folds onto the recovered state.
    produce_events(bootstrap, second.namespace, [event("purchase", customers[0], 2, amount="3")])
    wait_for(
        lambda: (second.profile(customers[0]) or {}).get("orders") == 2,
        timeout=60,
        what="second purchase on the recovered state",
    )
    profile = second.profile(customers[0])
    assert profile["revenue"] == "10.00"
    assert json.loads(json.dumps(profile))["counts"] == {"purchase": 2}
