"""Consent (SPEC §1 consent events, SPEC §4 Consent) in the pure core: fold, profile, rituals."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import EVENT_ADAPTER
from stream.core.consent import Choice, apply_consent, refusal
from stream.core.profile import view
from stream.core.rituals import Context, next_due
from stream.core.rules import Rules
from stream.core.state import fold, new_state
from tests.core.test_rituals import Sim, ms, treated
from tests.factory import event

CID = treated()
OPT_IN_REGION = Rules(version="test-optin", consent={"marketing_default": "opted_out"})


def consent(when: str, scope: str, status: str, **kw: object) -> dict:
    return {"occurred_at": when, "scope": scope, "status": status, **kw}


def test_opted_out_of_all_suppresses_every_customer_facing_ritual_with_the_event_id() -> None:
    s = Sim(CID).send(
        "consent", "2026-03-01T12:00:00Z", scope="all", status="opted_out", event_id="c-all"
    )
    s.send("purchase", "2026-03-02T12:00:00Z", order_id="o1")
    s.send("survey", "2026-03-02T13:00:00Z", survey="nps", score=2)
    s.until("2026-03-06T00:00:00Z")
    for ritual in ("post_purchase_welcome", "three_days_later"):
        [d] = s.of(ritual)
        assert (d["status"], d["reason"]) == ("suppressed", "no_consent")
        assert d["explanation"]["consent_event_id"] == "c-all"
        assert d["explanation"]["consent_scope"] == "all"
    [recovery] = s.of("service_recovery")  # service team audience: consent does not apply
    assert recovery["status"] == "delivered"


def test_marketing_opt_out_spares_care_rituals() -> None:
    s = Sim(CID).send(
        "consent", "2026-03-01T12:00:00Z", scope="marketing", status="opted_out", event_id="c-m"
    )
    s.send("purchase", "2026-03-02T12:00:00Z", order_id="o1")
    s.send("loyalty", "2026-03-02T13:00:00Z", action="tier_changed", tier="gold")
    s.send("survey", "2026-03-10T13:00:00Z", survey="nps", score=10)
    assert s.statuses("post_purchase_welcome")[0][:2] == ("delivered", "eligible")
    [milestone] = s.of("loyalty_milestone")
    assert (milestone["status"], milestone["reason"]) == ("suppressed", "no_consent")
    assert milestone["explanation"]["consent_event_id"] == "c-m"
    [referral] = s.of("referral_invite")
    assert (referral["status"], referral["reason"]) == ("suppressed", "no_consent")


def test_opting_back_in_restores_delivery_and_all_opt_in_resets_marketing() -> None:
    s = Sim(CID).send("consent", "2026-03-01T12:00:00Z", scope="marketing", status="opted_out")
    s.send("consent", "2026-03-01T13:00:00Z", scope="all", status="opted_in")
    s.send("loyalty", "2026-03-02T13:00:00Z", action="tier_changed", tier="gold")
    assert s.statuses("loyalty_milestone")[0][:2] == ("delivered", "eligible")


def test_consent_is_checked_at_the_decision_instant_in_ritual_time() -> None:
    # The opt-out is read early (its occurred_at is ahead of the clock) but takes effect only
    # when the clock reaches it: the purchase before it is decided as opted in.
    s = Sim(CID).send(
        "consent", "2026-03-02T12:30:00Z", clock="2026-03-02T11:00:00Z",
        scope="all", status="opted_out",
    )  # fmt: skip
    s.send("purchase", "2026-03-02T12:00:00Z", order_id="o1")
    s.until("2026-03-06T00:00:00Z")
    assert s.statuses("post_purchase_welcome")[0][:2] == ("delivered", "eligible")
    assert s.statuses("three_days_later")[0][:2] == ("suppressed", "no_consent")


def test_a_quiet_hours_deferral_rechecks_consent_at_eight() -> None:
    s = Sim(CID).send("purchase", "2026-03-02T22:00:00Z", order_id="o1")  # 22:00 UTC: quiet
    assert s.of("post_purchase_welcome") == []
    s.send("consent", "2026-03-02T23:00:00Z", scope="all", status="opted_out", event_id="late")
    s.until("2026-03-03T08:00:00Z")
    [d] = s.of("post_purchase_welcome")
    assert (d["status"], d["reason"], d["decided_at"]) == (
        "suppressed",
        "no_consent",
        "2026-03-03T08:00:00.000Z",
    )
    assert d["explanation"]["consent_event_id"] == "late"
    assert d["explanation"]["deferred_from"] == "2026-03-02T22:00:00.000Z"


def test_cancellation_and_once_per_rules_come_before_consent() -> None:
    s = Sim(CID).send("purchase", "2026-03-02T12:00:00Z", order_id="o1")
    s.send("review", "2026-03-03T12:00:00Z", order_id="o1", rating=4)
    s.send("consent", "2026-03-03T13:00:00Z", scope="all", status="opted_out")
    s.until("2026-03-06T00:00:00Z")
    assert s.statuses("three_days_later")[0][:2] == ("cancelled", "review_of_order")
    r = Sim(CID).send("survey", "2026-03-02T12:00:00Z", survey="nps", score=10)
    r.send("consent", "2026-03-03T12:00:00Z", scope="marketing", status="opted_out")
    r.send("survey", "2026-03-20T12:00:00Z", survey="nps", score=10)
    assert [x[:2] for x in r.statuses("referral_invite")] == [
        ("delivered", "eligible"),
        ("suppressed", "once_per_window"),
    ]


def test_a_consent_event_is_not_activity() -> None:
    s = Sim(CID).send("click", "2026-03-02T12:00:00Z", event_id="last-click")
    due = next_due(s.r)
    s.send("consent", "2026-03-20T12:00:00Z", scope="marketing", status="opted_in")
    assert next_due(s.r) == due  # the inactivity timer did not move
    s.until("2026-04-02T00:00:00Z")
    [d] = s.of("we_noticed")
    assert (d["anchor"], d["status"]) == ("last-click", "delivered")
    assert not [o for o in s.outcomes if o[2] == "came_back"]
    state = fold(
        new_state(CID),
        EVENT_ADAPTER.validate_python(event("consent", CID, occurred_at="2026-03-02T12:00:00Z")),
    )
    assert (state.first_seen, state.last_seen, state.eng_acc, state.active_days) == (0, 0, 0.0, [])


def test_marketing_default_from_the_rules_file() -> None:
    s = Sim(CID, Context(OPT_IN_REGION))
    s.send("loyalty", "2026-03-02T13:00:00Z", action="tier_changed", tier="silver")
    s.send("purchase", "2026-03-02T14:00:00Z", order_id="o1")
    [milestone] = s.of("loyalty_milestone")
    assert (milestone["status"], milestone["reason"]) == ("suppressed", "no_consent")
    assert milestone["explanation"]["consent_default"] == "opted_out"
    assert "consent_event_id" not in milestone["explanation"]
    assert s.statuses("post_purchase_welcome")[0][0] == "delivered"  # care, not marketing
    s.send("consent", "2026-03-03T12:00:00Z", scope="marketing", status="opted_in")
    s.send("loyalty", "2026-03-04T13:00:00Z", action="tier_changed", tier="gold")
    assert s.statuses("loyalty_milestone")[1][0] == "delivered"


def test_the_profile_shows_the_consent_state() -> None:
    rules = Rules(version="t")
    state = new_state(CID)
    p = view(state, ms("2026-03-02T12:00:00Z"), rules.profile)
    assert p["consent"]["all"] == "opted_in" and p["consent"]["marketing"] == "opted_in"
    assert p["consent"]["marketing_source"] == "default"
    assert view(state, 0, OPT_IN_REGION.profile)["consent"]["marketing"] == "opted_out"
    for kw in (
        consent("2026-03-02T12:00:00Z", "marketing", "opted_out", source="unsubscribe_link"),
        consent("2026-03-01T12:00:00Z", "marketing", "opted_in"),  # older, read late: no effect
    ):
        state = fold(state, EVENT_ADAPTER.validate_python(event("consent", CID, **kw)))
    c = view(state, ms("2026-03-03T12:00:00Z"), rules.profile)["consent"]
    assert c["marketing"] == "opted_out" and c["all"] == "opted_in"
    assert c["marketing_source"] == "unsubscribe_link"
    assert c["marketing_updated_at"] == "2026-03-02T12:00:00Z"
    assert state.counts == {"consent": 2}


_EVENTS = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.sampled_from(["marketing", "all"]),
        st.sampled_from(["opted_in", "opted_out"]),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(_EVENTS, st.randoms())
def test_consent_does_not_depend_on_arrival_order(events: list, rnd: object) -> None:
    """Any arrival order gives the consent of the time-ordered sequence."""
    numbered = [(at, f"e{i}", scope, status) for i, (at, scope, status) in enumerate(events)]

    def run(order: list) -> dict[str, Choice]:
        out: dict[str, Choice] = {}
        for at, eid, scope, status in order:
            out = apply_consent(out, scope=scope, status=status, at=at, event_id=eid)
        return out

    expected = run(sorted(numbered, key=lambda e: (e[0], e[1])))
    shuffled = list(numbered)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert run(shuffled) == expected


def test_refusal_table() -> None:
    out, inn = Choice("opted_out", 1, "x"), Choice("opted_in", 2, "y")
    cases = itertools.product([None, out, inn], [None, out, inn], [True, False])
    for all_, marketing, is_marketing in cases:
        consent_ = {k: v for k, v in (("all", all_), ("marketing", marketing)) if v}
        got = refusal(consent_, marketing=is_marketing, marketing_default="opted_in")
        blocked = all_ is out or (is_marketing and marketing is out)
        assert (got is not None) == blocked


def test_erasure_plan_and_receipt_hold_no_personal_content() -> None:
    from datetime import UTC, datetime

    from schemas.erasure import ErasureReceipt
    from stream.core.erasure import parse_request, plan, receipt
    from stream.core.ingest import Rejection

    body = b'{"request_id": "r1", "customer_id": "c1", "requested_at": "2026-03-02T12:00:00+01:00"}'
    request = parse_request(b"c1", body)
    assert not isinstance(request, Rejection)
    assert isinstance(parse_request(b"c2", body), Rejection)  # key must be the customer id
    assert parse_request(b"c1", b"{").reason == "malformed_json"  # type: ignore[union-attr]
    assert parse_request(b"c1", b"{}").reason == "schema_violation"  # type: ignore[union-attr]
    s = Sim(CID).send("purchase", "2026-03-02T12:00:00Z", order_id="o1")
    state = new_state(CID)
    state.r = s.r
    deleted = plan(state, projection=True)
    # three_days_later and the anniversary armed, we_noticed waiting implicitly (r.idle)
    assert deleted.state and deleted.timers == 3 and deleted.due_index
    assert plan(None, projection=False).model_dump() == {
        "state": False, "timers": 0, "queued_events": 0, "due_index": False,
        "redis_profile": False,
    }  # fmt: skip
    record = receipt(request, erased_at=datetime(2026, 3, 2, 12, 0, 1, tzinfo=UTC), deleted=deleted)
    ErasureReceipt.model_validate(record)
    assert record["requested_at"] == "2026-03-02T11:00:00.000Z"
    assert record["erased_at"] == "2026-03-02T12:00:01.000Z"
