"""Consent through `engage replay` on the real broker (SPEC §4 Consent): one row per case, the
same decisions byte for byte with one worker and with two."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.nudges import Decision
from stream.core.rituals import RITUALS
from stream.tools.replay import canonical_lines, run_replay
from tests.factory import event
from tests.system.test_ritual_engine import lines, replay_settings, treated

pytestmark = pytest.mark.integration

CASES = ("all", "marketing", "back_in", "after_deferral", "recovery")


def consent_events() -> tuple[list[dict[str, Any]], dict[str, str]]:
    c = {name: treated(f"consent-{name}", *RITUALS) for name in CASES}
    e: list[dict[str, Any]] = []

    def add(kind: str, who: str, when: str, **kw: Any) -> None:
        e.append(event(kind, c[who], occurred_at=when, **kw))

    def opt(who: str, when: str, scope: str, status: str, eid: str) -> None:
        add("consent", who, when, scope=scope, status=status, event_id=eid, source="support")

    opt("all", "2026-01-01T12:00:00Z", "all", "opted_out", "all-out")
    add("purchase", "all", "2026-01-05T12:00:00Z", order_id="a1")
    opt("marketing", "2026-01-01T12:00:00Z", "marketing", "opted_out", "mkt-out")
    add("purchase", "marketing", "2026-01-05T12:00:00Z", order_id="m1")
    add("loyalty", "marketing", "2026-01-20T12:00:00Z", action="tier_changed", tier="gold")
    opt("back_in", "2026-01-01T12:00:00Z", "marketing", "opted_out", "back-out")
    opt("back_in", "2026-01-03T12:00:00Z", "marketing", "opted_in", "back-in")
    add("loyalty", "back_in", "2026-01-20T12:00:00Z", action="tier_changed", tier="gold")
    add("purchase", "after_deferral", "2026-01-05T22:00:00Z", order_id="d1")  # quiet hours
    opt("after_deferral", "2026-01-05T23:00:00Z", "all", "opted_out", "deferral-out")
    opt("recovery", "2026-01-01T12:00:00Z", "all", "opted_out", "rec-out")
    add("survey", "recovery", "2026-01-05T12:00:00Z", survey="nps", score=2)
    return e, c


@pytest.mark.timeout(600)
def test_consent_table_in_a_replay_identical_with_one_and_two_workers(bootstrap: str) -> None:
    events, c = consent_events()
    until = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
    runs = {
        workers: run_replay(
            lines(events), settings=replay_settings(bootstrap), until=until, workers=workers
        )
        for workers in (1, 2)
    }
    assert list(canonical_lines(runs[1])) == list(canonical_lines(runs[2]))
    got = runs[1]
    for d in got:
        Decision.model_validate(d)

    def of(who: str, ritual: str) -> dict[str, Any]:
        [d] = [d for d in got if d["customer_id"] == c[who] and d["ritual"] == ritual]
        return d

    def row(d: dict[str, Any]) -> tuple[str, str, Any]:
        return d["status"], d["reason"], d["explanation"].get("consent_event_id")

    assert row(of("all", "post_purchase_welcome")) == ("suppressed", "no_consent", "all-out")
    assert row(of("all", "three_days_later")) == ("suppressed", "no_consent", "all-out")
    assert row(of("marketing", "post_purchase_welcome")) == ("delivered", "eligible", None)
    assert row(of("marketing", "loyalty_milestone")) == ("suppressed", "no_consent", "mkt-out")
    assert row(of("back_in", "loyalty_milestone")) == ("delivered", "eligible", None)
    deferred = of("after_deferral", "post_purchase_welcome")
    assert row(deferred) == ("suppressed", "no_consent", "deferral-out")
    assert deferred["decided_at"] == "2026-01-06T08:00:00.000Z"
    assert deferred["explanation"]["deferred_from"] == "2026-01-05T22:00:00.000Z"
    assert row(of("recovery", "service_recovery")) == ("delivered", "eligible", None)
    nudged = {d["customer_id"] for d in got if d["status"] == "delivered"}
    assert c["all"] not in nudged
