"""The fold of SPEC §3: exact hand-computed values and hypothesis invariants."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import EVENT_ADAPTER
from stream.core.profile import (
    engagement_score,
    lifecycle_stage,
    quadrant,
    sentiment,
    view,
)
from stream.core.rules import DEFAULT_RULES as RULES
from stream.core.state import (
    MS_PER_DAY,
    CustomerState,
    decode,
    encode,
    fold,
    is_duplicate,
    new_state,
    to_ms,
)
from tests.factory import T0, event

T0_MS = to_ms(T0)


def parse(evt: dict) -> object:
    return EVENT_ADAPTER.validate_python(evt)


def run(*events: dict, customer: str = "c1") -> CustomerState:
    state = new_state(customer)
    for evt in events:
        model = parse(evt)
        if not is_duplicate(state, model.event_id):
            state = fold(state, model)
    return state


def clock(days: float) -> int:
    return T0_MS + round(days * MS_PER_DAY)


# --- engagement score -------------------------------------------------------------------


def test_score_of_one_purchase_now() -> None:
    s = run(event("purchase", days=0))
    assert engagement_score(s, clock(0), RULES) == 100 * (1 - math.exp(-0.5))  # 39.3469...
    assert round(engagement_score(s, clock(0), RULES), 4) == 39.3469


def test_score_halves_activity_every_fourteen_days() -> None:
    s = run(event("purchase", days=0))
    assert round(engagement_score(s, clock(14), RULES), 6) == round(
        100 * (1 - math.exp(-0.25)), 6
    )  # 22.119922
    assert round(engagement_score(s, clock(14), RULES), 4) == 22.1199


def test_score_sums_decayed_weights_whatever_the_arrival_order() -> None:
    share_old = event("click", action="share", days=0)  # weight 3, 28 days old: 0.75
    view_new = event("click", action="page_view", days=28)  # weight 1
    expected = 100 * (1 - math.exp(-1.75 / 10))  # 16.0543...
    for order in [(share_old, view_new), (view_new, share_old)]:
        s = run(*order)
        assert math.isclose(engagement_score(s, clock(28), RULES), expected, rel_tol=1e-12)
    assert round(expected, 4) == 16.0543


def test_weights_per_event_kind() -> None:
    cases = [
        (event("click", action="page_view"), 1),
        (event("click", action="email_open"), 1),
        (event("click", action="search"), 1),
        (event("click", action="link_click"), 2),
        (event("click", action="email_click"), 2),
        (event("click", action="share"), 3),
        (event("click", action="comment"), 3),
        (event("purchase"), 5),
        (event("review"), 4),
        (event("survey"), 2),
        (event("support_contact"), 1),
        (event("loyalty", action="points_earned", points=5), 3),
        (event("loyalty", action="referral_converted"), 8),
    ]
    for evt, weight in cases:
        s = run(evt)
        assert s.eng_acc == weight, evt
        assert engagement_score(s, clock(0), RULES) == 100 * (1 - math.exp(-weight / 10))


# --- sentiment ----------------------------------------------------------------------------


def test_sentiment_mean_and_thresholds() -> None:
    promoter = event("survey", survey="nps", score=9, days=0)
    passive = [event("survey", survey="nps", score=7, days=d) for d in (1, 2, 3, 4)]
    # +1, 0, 0, 0 -> 0.25 > 0.2: positive
    assert sentiment(run(promoter, *passive[:3]), clock(5), RULES) == "positive"
    # +1, 0, 0, 0, 0 -> 0.2 is not > 0.2: neutral
    assert sentiment(run(promoter, *passive), clock(5), RULES) == "neutral"
    assert sentiment(run(), clock(5), RULES) == "neutral"


def test_sentiment_signals() -> None:
    neg = [
        event("survey", survey="nps", score=6),
        event("review", rating=2),
        event("survey", survey="csat", score=2),
        event("support_contact", status="opened", complaint=True),
    ]
    for evt in neg:
        assert sentiment(run(evt), clock(1), RULES) == "negative", evt
    pos = [
        event("survey", survey="nps", score=10),
        event("review", rating=4),
        event("survey", survey="csat", score=4),
    ]
    for evt in pos:
        assert sentiment(run(evt), clock(1), RULES) == "positive", evt
    neutral = [
        event("survey", survey="nps", score=8),
        event("review", rating=3),
        event("survey", survey="csat", score=3),
        event("survey", survey="ces", score=1),  # CES is not a sentiment signal
        event("support_contact", status="opened", complaint=False),
        event("support_contact", status="resolved", complaint=True),
    ]
    for evt in neutral:
        assert sentiment(run(evt), clock(1), RULES) == "neutral", evt


def test_sentiment_looks_back_ninety_days_only() -> None:
    s = run(event("review", rating=1, days=0), event("review", rating=5, days=10))
    assert sentiment(s, clock(60), RULES) == "neutral"  # -1, +1
    assert sentiment(s, clock(90), RULES) == "positive"  # the 1-star is exactly 90 days old
    assert sentiment(s, clock(101), RULES) == "neutral"  # nothing left


# --- quadrant and stage ----------------------------------------------------------------------


def test_quadrants() -> None:
    assert quadrant(40.0, "positive", RULES) == "advocate"
    assert quadrant(39.99, "positive", RULES) == "quiet_loyalist"
    assert quadrant(40.0, "negative", RULES) == "critic"
    assert quadrant(10.0, "negative", RULES) == "detached"
    assert quadrant(55.0, "neutral", RULES) == "engaged_neutral"
    assert quadrant(5.0, "neutral", RULES) == "passive"


def test_lifecycle_stages() -> None:
    s = run(event("click", days=0))
    assert lifecycle_stage(s, clock(30), RULES) == "new"
    s = run(event("click", days=0), event("click", days=40))
    assert lifecycle_stage(s, clock(40), RULES) == "reactivated"  # gap of 40 > 30 days
    assert lifecycle_stage(s, clock(70), RULES) == "reactivated"  # back exactly 30 days ago
    assert lifecycle_stage(s, clock(71), RULES) == "at_risk"  # 31 days silent
    assert lifecycle_stage(s, clock(130), RULES) == "at_risk"  # exactly 90 days silent
    assert lifecycle_stage(s, clock(130.001), RULES) == "dormant"
    s = run(event("click", days=0), event("click", days=40), event("click", days=60))
    assert lifecycle_stage(s, clock(70.001), RULES) == "active"  # back over 30 days ago
    s = run(event("click", days=0), event("click", days=20), event("click", days=45))
    assert lifecycle_stage(s, clock(45), RULES) == "active"  # no gap over 30 days


# --- the fold, field by field ---------------------------------------------------------------


def test_purchases_revenue_aov_and_clv() -> None:
    s = run(
        event("purchase", amount="10.10", currency="EUR", days=0),
        event("purchase", amount="20.25", currency="EUR", days=100),
        event("purchase", amount="5", currency="USD", days=200),
    )
    p = view(s, clock(730.5), RULES)  # two years after the first purchase
    assert p["orders"] == 3
    assert p["currency"] == "EUR"
    assert p["revenue"] == "30.35"
    assert p["revenue_by_currency"] == {"EUR": "30.35", "USD": "5"}
    assert p["average_order_value"] == "15.18"  # 30.35 / 2, half-even
    # AOV 15.175 x (2 orders / 2 years) x 3 years
    assert Decimal(p["clv_estimate"]) == Decimal("45.52")
    assert p["first_purchase_at"] == "2026-03-02T12:00:00Z"
    assert p["last_purchase_at"] == "2026-09-18T12:00:00Z"


def test_clv_does_not_extrapolate_from_under_a_year() -> None:
    s = run(event("purchase", amount="50", days=0), event("purchase", amount="50", days=7))
    assert view(s, clock(7), RULES)["clv_estimate"] == "300.00"  # 50 x 2/yr x 3


def test_complaints_and_first_contact_resolution() -> None:
    s = run(
        # t1: a complaint resolved at first contact
        event("support_contact", ticket_id="t1", status="resolved", complaint=True, days=0),
        # t2: a complaint opened, then resolved
        event("support_contact", ticket_id="t2", status="opened", complaint=True, days=1),
        event("support_contact", ticket_id="t2", status="resolved", complaint=True, days=2),
        # t3: a complaint opened and still open
        event("support_contact", ticket_id="t3", status="opened", complaint=True, days=3),
        # t4: not a complaint
        event("support_contact", ticket_id="t4", status="resolved", complaint=False, days=3),
    )
    p = view(s, clock(4), RULES)
    assert (p["complaints_total"], p["open_complaints"], p["complaints_resolved"]) == (3, 1, 2)
    assert p["first_contact_resolutions"] == 1
    # t1 is reopened: no longer a first-contact resolution, and open again
    s = fold(
        s,
        parse(event("support_contact", ticket_id="t1", status="reopened", complaint=True, days=5)),
    )
    p = view(s, clock(5), RULES)
    assert (p["complaints_total"], p["open_complaints"], p["complaints_resolved"]) == (3, 2, 1)
    assert p["first_contact_resolutions"] == 0


def test_late_support_contact_does_not_override_latest_status() -> None:
    s = run(
        event("support_contact", ticket_id="t1", status="resolved", complaint=True, days=2),
        event("support_contact", ticket_id="t1", status="opened", complaint=True, days=1),
    )
    p = view(s, clock(3), RULES)
    assert (p["open_complaints"], p["complaints_resolved"], p["complaints_total"]) == (0, 1, 1)
    assert p["first_contact_resolutions"] == 0  # two contacts on it


def test_surveys_reviews_loyalty_clicks() -> None:
    s = run(
        event("survey", survey="nps", score=3, days=0),
        event("survey", survey="nps", score=10, days=2),
        event("survey", survey="nps", score=5, days=1),  # late: not the latest
        event("survey", survey="csat", score=4, days=0),
        event("survey", survey="ces", score=6, days=0),
        event("review", rating=5, days=0),
        event("review", rating=2, days=0),
        event("loyalty", action="joined", days=0),
        event("loyalty", action="points_earned", points=120, days=0),
        event("loyalty", action="points_redeemed", points=20, days=0),
        event("loyalty", action="tier_changed", tier="gold", days=3),
        event("loyalty", action="tier_changed", tier="silver", days=4),
        event("loyalty", action="referral_sent", days=0),
        event("loyalty", action="referral_sent", days=0),
        event("loyalty", action="referral_converted", days=0),
        event("click", action="email_open", nudge_id="n1", days=0),
        event("click", action="search", days=0),
        event("click", action="search", days=0),
        event("click", days=0, tz="Asia/Tokyo"),
        event("click", days=-1, tz="Europe/Paris"),  # older: the later zone wins
    )
    p = view(s, clock(5), RULES)
    assert (p["nps_last"], p["nps_category"], p["csat_last"], p["ces_last"]) == (
        10,
        "promoter",
        4,
        6,
    )
    assert (p["reviews"], p["average_rating"]) == (2, 3.5)
    assert (p["loyalty_member"], p["tier"], p["points"]) == (True, "silver", 100)
    assert (p["referrals_sent"], p["referrals_converted"]) == (2, 1)
    assert (p["prompted_interactions"], p["unprompted_interactions"]) == (1, 4)
    assert p["click_actions"] == {"email_open": 1, "page_view": 2, "search": 2}
    assert p["counts"] == {"click": 5, "loyalty": 8, "review": 2, "survey": 5}
    assert p["tz"] == "Asia/Tokyo"
    assert s.top_tier_rank == 2  # gold: the highest ever held


def test_active_days_windows() -> None:
    days = [0, 0.5, 3, 10, 20, 24, 25, 26, 27.2]
    s = run(*[event("click", days=d) for d in days])
    p = view(s, clock(27.3), RULES)  # 2026-03-29: days 22..29 UTC count for 7d
    assert p["active_days_7d"] == 4  # days 24, 25, 26, 27
    # T0 is noon, so days 0 and 0.5 are two UTC days: 0, 1, 3, 10, 20, 24, 25, 26, 27
    assert p["active_days_30d"] == 9
    assert view(s, clock(31), RULES)["active_days_30d"] == 7  # 3, 10, 20, 24, 25, 26, 27


def test_duplicates_are_folded_once() -> None:
    evt = event("purchase", amount="10")
    s = run(evt, evt, dict(evt))
    assert s.orders == 1
    # An id 33 events back has left the window (SPEC: at least the last 32)
    s = run(evt, *[event("click") for _ in range(RULES.dedup_window)], evt)
    assert s.orders == 2


def test_roundtrip_and_typical_size() -> None:
    rng = random.Random(7)
    kinds = ["click"] * 12 + ["purchase", "review", "survey", "support_contact", "loyalty"]
    evts = [event(rng.choice(kinds), days=d * 0.7) for d in range(300)]
    s = run(*evts)
    raw = encode(s)
    assert decode(raw) == s
    assert len(raw) < 2048, len(raw)


# --- invariants ------------------------------------------------------------------------------

TIMES = st.integers(min_value=0, max_value=200 * 24)  # hours after T0

EVENTS = st.one_of(
    st.builds(
        lambda a, h: event("click", action=a, days=h / 24),
        st.sampled_from(["page_view", "share", "email_click"]),
        TIMES,
    ),
    st.builds(
        lambda amt, cur, h: event("purchase", amount=str(amt), currency=cur, days=h / 24),
        st.decimals(min_value=0, max_value=1000, places=2),
        st.sampled_from(["EUR", "USD"]),
        TIMES,
    ),
    st.builds(lambda r, h: event("review", rating=r, days=h / 24), st.integers(1, 5), TIMES),
    st.builds(
        lambda sv, sc, h: event("survey", survey=sv, score=sc, days=h / 24),
        st.sampled_from(["nps", "csat"]),
        st.integers(1, 5),
        TIMES,
    ),
    st.builds(
        lambda tk, stt, c, h: event(
            "support_contact", ticket_id=tk, status=stt, complaint=c, days=h / 24
        ),
        st.sampled_from(["t1", "t2", "t3"]),
        st.sampled_from(["opened", "resolved", "reopened"]),
        st.booleans(),
        TIMES,
    ),
    st.builds(
        lambda a, h: event("loyalty", action=a, points=3, tier="gold", days=h / 24),
        st.sampled_from(["joined", "points_earned", "tier_changed", "referral_sent"]),
        TIMES,
    ),
)


def _distinct_times(evts: list[dict]) -> bool:
    times = [e["occurred_at"] for e in evts]
    return len(set(times)) == len(times)


@settings(max_examples=150, deadline=None)
@given(st.lists(EVENTS, min_size=1, max_size=30).filter(_distinct_times), st.randoms())
def test_fold_does_not_depend_on_arrival_order(evts: list[dict], rnd: random.Random) -> None:
    """Topics are read at different speeds: the profile must not care (but for the stage,
    where a late event cannot undo a reactivation already seen)."""
    shuffled = list(evts)
    rnd.shuffle(shuffled)
    a, b = run(*evts), run(*shuffled)
    at = clock(201)
    va, vb = view(a, at, RULES), view(b, at, RULES)
    for key in ("engagement_score", "lifecycle_stage", "quadrant"):
        va.pop(key), vb.pop(key)
    assert va == vb
    assert math.isclose(
        a.eng_acc * 0.5 ** ((at - a.eng_at) / (14 * MS_PER_DAY)),
        b.eng_acc * 0.5 ** ((at - b.eng_at) / (14 * MS_PER_DAY)),
        rel_tol=1e-9,
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(EVENTS, min_size=1, max_size=60))
def test_state_is_bounded_and_consistent(evts: list[dict]) -> None:
    s = run(*evts)
    assert len(encode(s)) < 4096
    assert decode(encode(s)) == s
    assert 0 <= s.first_contact_resolutions <= s.complaints_total
    assert s.open_complaints >= 0
    assert s.open_complaints + s.complaints_resolved <= s.complaints_total
    assert s.orders == sum(m.orders for m in s.money.values())
    assert sum(s.counts.values()) == len({e["event_id"] for e in evts})
    score = engagement_score(s, clock(300), RULES)
    assert 0.0 <= score < 100.0
    assert s.first_seen <= s.last_seen


@settings(max_examples=100, deadline=None)
@given(st.lists(EVENTS, min_size=1, max_size=20))
def test_refolding_the_same_events_changes_nothing(evts: list[dict]) -> None:
    once = run(*evts)
    twice = run(*evts, *evts)
    assert encode(once) == encode(twice)


def test_late_event_is_folded_at_once() -> None:
    s = run(event("click", days=10), event("purchase", days=1, amount="3"))
    assert s.orders == 1
    assert s.first_seen == clock(1)
    assert s.last_seen == clock(10)
    assert timedelta(milliseconds=s.last_seen - s.first_seen) == timedelta(days=9)
