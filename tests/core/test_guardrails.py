"""The guardrails as an ordered list: each one alone, their order, and the same answers as the
`if/elif` ladder they replaced (kept below as the oracle)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.consent import Choice, refusal
from stream.core.ritual_defs import Compiled
from stream.core.rituals import (
    GUARDRAILS,
    Context,
    Defer,
    Due,
    RitualState,
    Verdict,
    _iso,
    _Run,
    holdout_bucket,
    quiet_until,
    verdict,
)
from stream.core.rules import ConsentRules, Rules
from stream.core.vocabulary import Status

RULES = Rules(version="guard-1")
OPT_OUT = Rules(version="guard-2", consent=ConsentRules(marketing_default="opted_out"))
PROGRAM = RULES.program
NOON = 1_772_452_800_000  # 2026-03-02T12:00:00Z
H = 3_600_000
D = 24 * H


def ladder(due: Due) -> tuple[str, str, dict[str, Any]] | tuple[str, int, dict[str, Any]]:
    """The `if/elif` ladder of `_Run.decide` before the list, verbatim but for returning its
    answer: (status, reason, facts added) or ("deferred", until, facts added)."""
    ritual, at, r, rules, cancelled = due.ritual, due.at, due.r, due.rules, due.cancelled
    name = ritual.name
    facts: dict[str, Any] = {}
    status, reason = "delivered", "eligible"
    customer_facing = ritual.audience == "customer"
    once_per = ritual.d.once_per
    previous = r.windows.get(name, 0) if once_per is not None else 0
    default = rules.consent.marketing_default
    refused = (
        refusal(r.consent, marketing=ritual.marketing_consent, marketing_default=default)
        if customer_facing
        else None
    )
    if cancelled:
        status, reason = "cancelled", cancelled
    elif previous and once_per is not None and at - previous < once_per:
        status, reason = "suppressed", "once_per_window"
        facts["previous_invite_at"] = _iso(previous)
    elif refused is not None:
        status, reason = "suppressed", "no_consent"
        facts["consent_scope"] = refused.scope
        if refused.event_id is not None:
            facts["consent_event_id"] = refused.event_id
        else:
            facts["consent_default"] = default
    elif (bucket := holdout_bucket(due.customer_id, name)) < ritual.d.holdout_percent:
        status, reason = "held_out", "holdout"
        facts["holdout_bucket"] = bucket
    elif customer_facing:
        wake = quiet_until(at, r.tz, rules)
        if wake is not None:
            return ("deferred", wake, {"deferred_from": _iso(at)})
        cap = rules.guardrails.frequency_cap
        recent = [m for t, m in r.deliveries if at - cap.window < t <= at]
        if len(recent) >= cap.max_delivered or (
            ritual.marketing and sum(recent) >= cap.max_marketing
        ):
            status, reason = "suppressed", "frequency_cap"
            facts["delivered_in_window"] = len(recent)
            facts["marketing_in_window"] = sum(recent)
        elif (
            ritual.timed
            and due.wall_ms is not None
            and due.wall_ms - at > rules.guardrails.lateness
        ):
            status, reason = "expired", "lateness"
    return (status, reason, facts)


def answer(due: Due) -> tuple[str, Any, dict[str, Any]]:
    got = verdict(due)
    if isinstance(got, Defer):
        return ("deferred", got.until, dict(got.facts))
    return (got.status, got.reason, dict(got.facts))


def situation(ritual: str = "three_days_later", at: int = NOON, **kw: Any) -> Due:
    """A decision of `ritual` falling due at `at`, for a customer no ritual holds out."""
    fields: dict[str, Any] = {
        "cancelled": None, "r": RitualState(tz="UTC"), "customer_id": "cust-0",
        "rules": RULES, "wall_ms": None,
    }  # fmt: skip
    fields.update(kw)
    return Due(PROGRAM.by_name[ritual], at, **fields)


def test_the_guardrails_run_in_the_documented_order() -> None:
    """docs/rituals.md's table of checks, steps 2 to 8, in the same order."""
    assert [g.__name__ for g in GUARDRAILS] == [
        "cancelled",
        "once_per_window",
        "consent",
        "holdout",
        "quiet_hours",
        "frequency_cap",
        "lateness",
    ]


def test_the_first_guardrail_that_does_not_pass_settles_the_decision() -> None:
    opted_out = {"all": Choice("opted_out", NOON - D, "c1")}
    night = NOON + 11 * H  # 23:00 UTC, inside the default quiet hours
    held = next(f"cust-{i}" for i in range(1000) if holdout_bucket(f"cust-{i}", "anniversary") < 10)
    # consent comes before the holdout and quiet hours
    due = situation(
        "anniversary", night, r=RitualState(tz="UTC", consent=opted_out), customer_id=held
    )
    assert answer(due) == (
        "suppressed",
        "no_consent",
        {"consent_scope": "all", "consent_event_id": "c1"},
    )
    # the holdout before quiet hours: a held-out decision is never deferred
    due = situation("anniversary", night, customer_id=held)
    assert answer(due) == (
        "held_out",
        "holdout",
        {"holdout_bucket": holdout_bucket(held, "anniversary")},
    )
    # quiet hours defer what would be capped: the cap is checked again at their end
    full = RitualState(tz="UTC", deliveries=[(NOON - H, False), (NOON - 2 * H, False)])
    due = situation("three_days_later", night, r=full)
    assert isinstance(verdict(due), Defer)
    assert answer(situation("three_days_later", NOON, r=full))[:2] == (
        "suppressed",
        "frequency_cap",
    )
    # a cancellation wins over everything
    assert answer(situation("three_days_later", night, r=full, cancelled="review_of_order")) == (
        "cancelled", "review_of_order", {},
    )  # fmt: skip
    # lateness last, and for timed rituals only (live mode: a wall clock)
    late = NOON + 2 * D
    assert answer(situation("three_days_later", wall_ms=late)) == ("expired", "lateness", {})
    assert answer(situation("post_purchase_welcome", wall_ms=late))[:2] == ("delivered", "eligible")
    assert answer(situation("three_days_later", r=full, wall_ms=late))[:2] == (
        "suppressed", "frequency_cap",
    )  # fmt: skip
    # nothing applies: delivered, eligible
    assert verdict(situation()) == Verdict(Status.DELIVERED, "eligible", {})


def test_a_service_team_ritual_meets_only_the_holdout() -> None:
    """Consent, quiet hours, the cap and lateness concern customer-facing decisions only."""
    r = RitualState(
        tz="UTC",
        consent={"all": Choice("opted_out", NOON - D, "c1")},
        deliveries=[(NOON - H, True)] * 5,
    )
    due = situation("service_recovery", NOON + 11 * H, r=r, wall_ms=NOON + 30 * D)
    assert [g.__name__ for g in GUARDRAILS if g(due) is not None] == []


_CONSENT = st.dictionaries(
    st.sampled_from(["all", "marketing"]),
    st.builds(
        Choice,
        st.sampled_from(["opted_in", "opted_out"]),
        st.integers(NOON - 30 * D, NOON),
        st.sampled_from(["c1", "c2"]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    ritual=st.sampled_from([r.name for r in PROGRAM.rituals]),
    at=st.integers(NOON - 2 * D, NOON + 2 * D),
    tz=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]),
    customer=st.integers(0, 200),
    consent=_CONSENT,
    window=st.one_of(st.none(), st.integers(1, 60 * D)),
    deliveries=st.lists(st.tuples(st.integers(-10 * D, D), st.booleans()), max_size=4),
    wall=st.one_of(st.none(), st.sampled_from([H, 2 * D]), st.integers(0, 3 * D)),
    cancelled=st.sampled_from([None, "", "review_of_order", "activity_resumed"]),
    rules=st.sampled_from([RULES, OPT_OUT]),
)
def test_the_list_answers_exactly_as_the_ladder_did(
    ritual: str,
    at: int,
    tz: str,
    customer: int,
    consent: dict[str, Choice],
    window: int | None,
    deliveries: list[tuple[int, bool]],
    wall: int | None,
    cancelled: str | None,
    rules: Rules,
) -> None:
    r = RitualState(
        tz=tz,
        consent=consent,
        windows={} if window is None else {ritual: max(at - window, 1)},
        deliveries=[(at + dt, m) for dt, m in deliveries],
    )
    due = situation(
        ritual, at, r=r, customer_id=f"cust-{customer}", rules=rules,
        wall_ms=None if wall is None else at + wall, cancelled=cancelled,
    )  # fmt: skip
    assert answer(due) == ladder(due)


def test_a_deferred_decision_is_armed_again_at_the_end_of_quiet_hours() -> None:
    """`_Run.decide` arms the deferral as a timer and records nothing."""
    night = NOON + 11 * H
    r = RitualState(tz="UTC")
    run = _Run(r, "cust-0", Context(RULES))
    ritual: Compiled = PROGRAM.by_name["three_days_later"]
    run.decide(ritual, "o1", night, night, {"order_id": "o1"}, "e1")
    assert run.out == [] and r.last == {}
    [timer] = r.timers
    assert timer.due == quiet_until(night, "UTC", RULES) and timer.due_at == night
    assert timer.facts == {"order_id": "o1", "deferred_from": _iso(night)}
