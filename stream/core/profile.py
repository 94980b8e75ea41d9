"""The customer profile: the stored state read at a clock (SPEC §3).

Scores, windows and segments depend on "now", and in this product "now" is the partition clock,
never the reader's wall clock. So they are derived here, by pure functions of (state, clock,
rules), and the same state read at the same clock always gives the same profile.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from stream.core.rituals import DELIVERED_WINDOW_MS
from stream.core.rules import DEFAULT_RULES, ProfileRules
from stream.core.state import MS_PER_DAY, CustomerState, Segments, from_ms

Sentiment = Literal["positive", "neutral", "negative"]
Quadrant = Literal["advocate", "critic", "quiet_loyalist", "detached", "engaged_neutral", "passive"]
Stage = Literal["new", "active", "at_risk", "dormant", "reactivated"]
NpsCategory = Literal["promoter", "passive", "detractor"]

STAGES: tuple[Stage, ...] = ("new", "active", "reactivated", "at_risk", "dormant")
QUADRANTS: tuple[Quadrant, ...] = (
    "advocate",
    "critic",
    "quiet_loyalist",
    "detached",
    "engaged_neutral",
    "passive",
)
_CENT = Decimal("0.01")


def engagement_score(state: CustomerState | Segments, clock: int, rules: ProfileRules) -> float:
    """100 x (1 - exp(-A / 10)), A the activity decayed with a 14-day half-life to `clock`."""
    if state.eng_at == 0:
        return 0.0
    half_life_ms = rules.half_life_days * MS_PER_DAY
    # An event ahead of the clock counts as new, never as more than its weight.
    age = max(clock - state.eng_at, 0)
    activity = state.eng_acc * math.pow(0.5, age / half_life_ms)
    return 100.0 * (1.0 - math.exp(-activity / rules.score_scale))


def sentiment(state: CustomerState | Segments, clock: int, rules: ProfileRules) -> Sentiment:
    """Mean of the signals of the last 90 days: > 0.2 positive, < -0.2 negative."""
    horizon = clock - rules.sentiment_window_days * MS_PER_DAY
    values = [v for t, v in state.signals if horizon < t <= clock]
    if not values:
        return "neutral"
    mean = sum(values) / len(values)
    if mean > rules.sentiment_threshold:
        return "positive"
    if mean < -rules.sentiment_threshold:
        return "negative"
    return "neutral"


def quadrant(score: float, feeling: Sentiment, rules: ProfileRules) -> Quadrant:
    engaged = score >= rules.engaged_score
    if feeling == "positive":
        return "advocate" if engaged else "quiet_loyalist"
    if feeling == "negative":
        return "critic" if engaged else "detached"
    return "engaged_neutral" if engaged else "passive"


def lifecycle_stage(state: CustomerState | Segments, clock: int, rules: ProfileRules) -> Stage:
    inactive = clock - state.last_seen
    if clock - state.first_seen <= rules.new_days * MS_PER_DAY:
        return "new"
    if inactive > rules.dormant_days * MS_PER_DAY:
        return "dormant"
    if inactive > rules.at_risk_days * MS_PER_DAY:
        return "at_risk"
    if state.reactivated_at and clock - state.reactivated_at <= rules.reactivated_days * MS_PER_DAY:
        return "reactivated"
    return "active"


def nps_category(score: int | None) -> NpsCategory | None:
    if score is None:
        return None
    return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"


def active_days(state: CustomerState, clock: int, window_days: int) -> int:
    """Distinct UTC days with activity among the `window_days` days ending with today."""
    today = clock // MS_PER_DAY
    return sum(1 for d in state.active_days if today - window_days < d <= today)


def primary_money(state: CustomerState) -> tuple[str | None, int, Decimal]:
    """(currency, orders, revenue) in the customer's own currency: that of the first purchase."""
    money = state.money.get(state.currency) if state.currency else None
    if money is None:
        return None, 0, Decimal(0)
    return state.currency, money.orders, Decimal(money.revenue)


def clv_estimate(state: CustomerState, clock: int, rules: ProfileRules) -> Decimal:
    """AOV x purchases per year since the first purchase x 3 years (own currency)."""
    _, orders, revenue = primary_money(state)
    if orders == 0:
        return Decimal(0)
    years = max((clock - state.first_purchase_at) / (365.25 * MS_PER_DAY), rules.clv_min_years)
    per_year = Decimal(orders) / Decimal(repr(years))
    aov = revenue / orders
    return (aov * per_year * rules.clv_years).quantize(_CENT, ROUND_HALF_EVEN)


def consent_view(state: CustomerState, rules: ProfileRules) -> dict[str, Any]:
    """The consent that applies now, per scope, and where it comes from (SPEC §4 Consent).

    `marketing` is what marketing rituals check: opted out when either scope says so. Without
    any consent event a customer is opted in to `all`, and to `marketing` as the rules say.
    """
    out: dict[str, Any] = {}
    for scope in ("all", "marketing"):
        choice = state.consent.get(scope)
        default = rules.marketing_default if scope == "marketing" else "opted_in"
        out[scope] = choice.status if choice else default
        out[f"{scope}_source"] = (choice.source or "unspecified") if choice else "default"
        out[f"{scope}_updated_at"] = _iso(choice.at) if choice else None
    if out["all"] == "opted_out":
        out["marketing"] = "opted_out"
    return out


def _iso(ms: int) -> str | None:
    return from_ms(ms).isoformat().replace("+00:00", "Z") if ms else None


def view(state: CustomerState, clock: int, rules: ProfileRules = DEFAULT_RULES) -> dict[str, Any]:
    """The profile of SPEC §3 as plain JSON-ready values, read at the partition clock."""
    score = engagement_score(state, clock, rules)
    feeling = sentiment(state, clock, rules)
    currency, own_orders, revenue = primary_money(state)
    aov = (revenue / own_orders).quantize(_CENT, ROUND_HALF_EVEN) if own_orders else None
    return {
        "customer_id": state.customer_id,
        "as_of": _iso(clock),
        "first_seen": _iso(state.first_seen),
        "last_seen": _iso(state.last_seen),
        "tz": state.tz,
        "counts": dict(sorted(state.counts.items())),
        "click_actions": dict(sorted(state.clicks.items())),
        "active_days_7d": active_days(state, clock, 7),
        "active_days_30d": active_days(state, clock, 30),
        "orders": state.orders,
        "currency": currency,
        "revenue": str(revenue),
        "revenue_by_currency": {c: m.revenue for c, m in sorted(state.money.items())},
        "average_order_value": str(aov) if aov is not None else None,
        "first_purchase_at": _iso(state.first_purchase_at),
        "last_purchase_at": _iso(state.last_purchase_at),
        "clv_estimate": str(clv_estimate(state, clock, rules)),
        "nps_last": state.nps_last,
        "nps_category": nps_category(state.nps_last),
        "csat_last": state.csat_last,
        "ces_last": state.ces_last,
        "reviews": state.reviews,
        "average_rating": round(state.rating_sum / state.reviews, 2) if state.reviews else None,
        "open_complaints": state.open_complaints,
        "complaints_total": state.complaints_total,
        "complaints_resolved": state.complaints_resolved,
        "first_contact_resolutions": state.first_contact_resolutions,
        "loyalty_member": state.loyalty_member,
        "tier": state.tier,
        "points": state.points,
        "referrals_sent": state.referrals_sent,
        "referrals_converted": state.referrals_converted,
        "prompted_interactions": state.prompted_interactions,
        "unprompted_interactions": state.unprompted_interactions,
        "engagement_score": round(score, 2),
        "sentiment": feeling,
        "quadrant": quadrant(score, feeling, rules),
        "lifecycle_stage": lifecycle_stage(state, clock, rules),
        "nudges_delivered_7d": sum(n for _, _, n in _rituals(state, clock)),
        "rituals": {
            ritual: {
                "last_decision": status,
                "last_decided_at": _iso(at),
                "delivered_7d": delivered,
            }
            for ritual, (at, status), delivered in _rituals(state, clock)
        },
        "consent": consent_view(state, rules),
    }


def _rituals(state: CustomerState, clock: int) -> list[tuple[str, tuple[int, str], int]]:
    """Per ritual with a decision: its last decision and nudges delivered in the last 7 days
    as of the clock (a decision stamped after the clock, in a replay read early, counts too)."""
    recent = [name for t, name in state.r.delivered if clock - t < DELIVERED_WINDOW_MS]
    return [(ritual, last, recent.count(ritual)) for ritual, last in sorted(state.r.last.items())]
