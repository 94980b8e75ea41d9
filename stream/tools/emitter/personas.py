"""Who the simulated customers are: one table of behaviour parameters per persona.

Every rate and probability the simulation draws from lives here, in `PERSONAS`, so that the
tests can compare the statistics of a seeded run with the parameters that produced it, and so
that anyone tuning the traffic changes numbers in one place. Rates are per customer-day of
activity (a churned or lapsed customer has none); probabilities are per opportunity (per order,
per survey invitation, per ticket, per nudge received).

The personas span SPEC §3: advocates, quiet loyalists and critics are attitudes (quadrants);
newcomers, churners and win-backs are lifecycles (new, dormant, reactivated).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Persona:
    """Behaviour parameters of one persona (see the module docstring for units)."""

    name: str
    #: Share of the simulated population.
    share: float

    # Browsing: sessions of clicks.
    sessions_per_day: float
    clicks_per_session: float  # mean, >= 1
    share_weight: float  # weight of `share` among in-session clicks (page_view is 0.50)
    comment_weight: float
    newsletters_per_day: float  # marketing emails received (not nudges)
    newsletter_open: float
    newsletter_click: float  # given opened

    # Buying.
    purchases_per_day: float
    order_value_eur: float  # mean order value, in EUR before currency conversion
    items_per_order: float  # mean, >= 1
    review_rate: float  # share of orders that get a review
    ratings: tuple[float, float, float, float, float]  # weights of ratings 1..5

    # Surveys: invitations are sent to everyone, a persona-specific share answers.
    survey_response: float
    nps: tuple[float, ...]  # 11 weights, scores 0..10
    csat: tuple[float, float, float, float, float]  # weights of 1..5
    ces: tuple[float, ...]  # 7 weights, 1..7 (higher = easier)

    # Support.
    tickets_per_day: float  # tickets not about an order
    order_issue_rate: float  # share of orders that lead to a ticket
    complaint_rate: float  # share of tickets that are complaints
    first_contact_resolution: float  # share of tickets resolved by their first contact
    reopen_rate: float  # share of resolved multi-contact tickets reopened once

    # Loyalty programme.
    loyalty_join: float  # probability of joining during the simulation
    referrals_per_day: float  # members only
    referral_conversion: float
    redeem_rate: float  # chance of redeeming points at checkout when the balance allows

    # Lifecycle (days are simulated days).
    arrives_within: tuple[float, float] | None = None  # fraction of the run: newcomers
    churn_after_days: tuple[float, float] | None = None  # silent for good after this
    gap_start_days: tuple[float, float] | None = None  # win-backs lapse at this point ...
    gap_days: tuple[float, float] | None = None  # ... for this long (> 30 days) and return

    # Reactions to delivered nudges (SPEC §4); all given that the nudge reached the customer.
    open_rate: float = 0.35  # opens the message: a prompted email_open carrying nudge_id
    click_rate: float = 0.4  # given opened: a prompted email_click
    return_rate: float = 0.2  # we_noticed: comes back for a visit (given opened)
    resume_rate: float = 0.3  # we_noticed to a lapsed customer: resumes regular activity
    checkin_review_rate: float = 0.3  # three_days_later: reviews the order (given opened)
    invite_referral_rate: float = 0.2  # referral_invite: sends a referral (given opened)
    anniversary_purchase_rate: float = 0.15  # anniversary: buys (given opened)
    recovery_csat_rate: float = 0.5  # service_recovery without an open ticket: rates it


PERSONAS: tuple[Persona, ...] = (
    Persona(
        name="advocate",
        share=0.15,
        sessions_per_day=0.9,
        clicks_per_session=6.0,
        share_weight=0.06,
        comment_weight=0.05,
        newsletters_per_day=0.3,
        newsletter_open=0.5,
        newsletter_click=0.35,
        purchases_per_day=0.06,
        order_value_eur=75.0,
        items_per_order=2.2,
        review_rate=0.45,
        ratings=(0.0, 0.0, 0.0, 0.3, 0.7),
        survey_response=0.6,
        nps=(0, 0, 0, 0, 0, 0, 0, 0, 0, 0.35, 0.65),
        csat=(0.0, 0.02, 0.08, 0.35, 0.55),
        ces=(0.0, 0.0, 0.02, 0.08, 0.2, 0.35, 0.35),
        tickets_per_day=0.004,
        order_issue_rate=0.03,
        complaint_rate=0.1,
        first_contact_resolution=0.65,
        reopen_rate=0.05,
        loyalty_join=0.9,
        referrals_per_day=0.02,
        referral_conversion=0.4,
        redeem_rate=0.4,
        open_rate=0.6,
        click_rate=0.5,
        return_rate=0.5,
        checkin_review_rate=0.5,
        invite_referral_rate=0.45,
        anniversary_purchase_rate=0.3,
        recovery_csat_rate=0.6,
    ),
    Persona(
        name="quiet_loyalist",
        share=0.25,
        sessions_per_day=0.35,
        clicks_per_session=4.0,
        share_weight=0.005,
        comment_weight=0.005,
        newsletters_per_day=0.3,
        newsletter_open=0.35,
        newsletter_click=0.25,
        purchases_per_day=0.05,
        order_value_eur=60.0,
        items_per_order=1.8,
        review_rate=0.08,
        ratings=(0.0, 0.02, 0.13, 0.45, 0.4),
        survey_response=0.25,
        nps=(0, 0, 0, 0, 0, 0, 0.05, 0.25, 0.4, 0.2, 0.1),
        csat=(0.0, 0.03, 0.17, 0.5, 0.3),
        ces=(0.0, 0.02, 0.05, 0.13, 0.3, 0.3, 0.2),
        tickets_per_day=0.003,
        order_issue_rate=0.03,
        complaint_rate=0.15,
        first_contact_resolution=0.65,
        reopen_rate=0.05,
        loyalty_join=0.7,
        referrals_per_day=0.002,
        referral_conversion=0.3,
        redeem_rate=0.5,
        open_rate=0.4,
        click_rate=0.3,
        return_rate=0.35,
        checkin_review_rate=0.2,
        invite_referral_rate=0.1,
        anniversary_purchase_rate=0.25,
    ),
    Persona(
        name="critic",
        share=0.12,
        sessions_per_day=0.5,
        clicks_per_session=5.0,
        share_weight=0.01,
        comment_weight=0.08,
        newsletters_per_day=0.3,
        newsletter_open=0.15,
        newsletter_click=0.15,
        purchases_per_day=0.025,
        order_value_eur=55.0,
        items_per_order=1.6,
        review_rate=0.35,
        ratings=(0.55, 0.35, 0.1, 0.0, 0.0),
        survey_response=0.5,
        nps=(0.1, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0, 0, 0, 0),
        csat=(0.35, 0.35, 0.2, 0.08, 0.02),
        ces=(0.25, 0.25, 0.2, 0.15, 0.1, 0.05, 0.0),
        tickets_per_day=0.03,
        order_issue_rate=0.15,
        complaint_rate=0.7,
        first_contact_resolution=0.35,
        reopen_rate=0.25,
        loyalty_join=0.2,
        referrals_per_day=0.0,
        referral_conversion=0.1,
        redeem_rate=0.3,
        open_rate=0.3,
        click_rate=0.3,
        return_rate=0.2,
        checkin_review_rate=0.3,
        invite_referral_rate=0.0,
        anniversary_purchase_rate=0.05,
        recovery_csat_rate=0.7,
    ),
    Persona(
        name="newcomer",
        share=0.18,
        sessions_per_day=0.7,
        clicks_per_session=6.0,
        share_weight=0.02,
        comment_weight=0.01,
        newsletters_per_day=0.3,
        newsletter_open=0.45,
        newsletter_click=0.3,
        purchases_per_day=0.04,
        order_value_eur=45.0,
        items_per_order=1.5,
        review_rate=0.15,
        ratings=(0.05, 0.05, 0.2, 0.4, 0.3),
        survey_response=0.35,
        nps=(0.01, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.2, 0.2, 0.15, 0.15),
        csat=(0.05, 0.08, 0.2, 0.4, 0.27),
        ces=(0.03, 0.05, 0.1, 0.2, 0.25, 0.22, 0.15),
        tickets_per_day=0.006,
        order_issue_rate=0.06,
        complaint_rate=0.25,
        first_contact_resolution=0.55,
        reopen_rate=0.1,
        loyalty_join=0.4,
        referrals_per_day=0.004,
        referral_conversion=0.3,
        redeem_rate=0.3,
        arrives_within=(0.05, 0.8),
        open_rate=0.5,
        click_rate=0.45,
        return_rate=0.3,
        checkin_review_rate=0.35,
        invite_referral_rate=0.15,
    ),
    Persona(
        name="churner",
        share=0.15,
        sessions_per_day=0.4,
        clicks_per_session=3.5,
        share_weight=0.005,
        comment_weight=0.02,
        newsletters_per_day=0.3,
        newsletter_open=0.12,
        newsletter_click=0.15,
        purchases_per_day=0.02,
        order_value_eur=40.0,
        items_per_order=1.4,
        review_rate=0.05,
        ratings=(0.2, 0.25, 0.3, 0.2, 0.05),
        survey_response=0.15,
        nps=(0.04, 0.04, 0.06, 0.1, 0.12, 0.16, 0.18, 0.14, 0.1, 0.04, 0.02),
        csat=(0.15, 0.2, 0.3, 0.25, 0.1),
        ces=(0.1, 0.15, 0.2, 0.2, 0.15, 0.12, 0.08),
        tickets_per_day=0.01,
        order_issue_rate=0.08,
        complaint_rate=0.45,
        first_contact_resolution=0.45,
        reopen_rate=0.15,
        loyalty_join=0.2,
        referrals_per_day=0.0,
        referral_conversion=0.1,
        redeem_rate=0.2,
        churn_after_days=(14.0, 60.0),
        open_rate=0.35,
        click_rate=0.4,
        return_rate=0.5,
        resume_rate=0.3,
        checkin_review_rate=0.15,
        invite_referral_rate=0.05,
        anniversary_purchase_rate=0.1,
    ),
    Persona(
        name="winback",
        share=0.15,
        sessions_per_day=0.45,
        clicks_per_session=4.0,
        share_weight=0.01,
        comment_weight=0.01,
        newsletters_per_day=0.3,
        newsletter_open=0.2,
        newsletter_click=0.25,
        purchases_per_day=0.025,
        order_value_eur=50.0,
        items_per_order=1.6,
        review_rate=0.1,
        ratings=(0.05, 0.1, 0.3, 0.35, 0.2),
        survey_response=0.25,
        nps=(0.02, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.2, 0.1, 0.05),
        csat=(0.06, 0.1, 0.25, 0.39, 0.2),
        ces=(0.04, 0.08, 0.13, 0.2, 0.25, 0.18, 0.12),
        tickets_per_day=0.008,
        order_issue_rate=0.05,
        complaint_rate=0.3,
        first_contact_resolution=0.5,
        reopen_rate=0.1,
        loyalty_join=0.35,
        referrals_per_day=0.002,
        referral_conversion=0.3,
        redeem_rate=0.3,
        gap_start_days=(7.0, 40.0),
        gap_days=(35.0, 70.0),
        open_rate=0.45,
        click_rate=0.45,
        return_rate=0.7,
        resume_rate=0.7,
        checkin_review_rate=0.2,
        invite_referral_rate=0.1,
        anniversary_purchase_rate=0.2,
    ),
)
PERSONA_BY_NAME: dict[str, Persona] = {p.name: p for p in PERSONAS}

#: Survey invitations: NPS relationship surveys go to everyone about monthly; CSAT/CES are
#: transactional, after an order or a closed ticket. The persona's `survey_response` applies.
NPS_INVITES_PER_DAY = 1 / 30
CSAT_AFTER_ORDER_INVITE = 0.3
CSAT_AFTER_TICKET_INVITE = 0.8
CES_AFTER_TICKET_INVITE = 0.6

#: Lifetime loyalty points (1 per EUR spent) at which a member reaches each tier above bronze.
TIER_THRESHOLDS: tuple[tuple[str, int], ...] = (
    ("bronze", 0),
    ("silver", 250),
    ("gold", 1000),
    ("platinum", 2500),
)
#: Points are redeemed in blocks of this size, when the balance allows.
REDEEM_BLOCK = 200

#: Activity multiplier per customer (log-normal with mean 1): real customers of one persona
#: differ, and the processor's aggregates should see a spread, not six identical clones.
ACTIVITY_SIGMA = 0.35

#: Relative intensity of customer-initiated activity by local hour (max 1.0): quiet nights,
#: a lunch bump, an evening peak. Activity is thinned by this profile in the customer's `tz`,
#: so the per-day rates above stay exact while the daily shape looks like real traffic.
HOUR_PROFILE: tuple[float, ...] = (
    0.15, 0.08, 0.05, 0.04, 0.04, 0.06, 0.15, 0.35, 0.55, 0.65, 0.7, 0.75,
    0.85, 0.8, 0.7, 0.7, 0.75, 0.8, 0.9, 1.0, 1.0, 0.95, 0.7, 0.4,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Zone:
    """Where a customer lives: an IANA time zone, its currency and a rough EUR rate."""

    tz: str
    currency: str
    per_eur: float  # units of `currency` per EUR, to keep order values comparable
    decimals: int  # ISO 4217 minor units
    weight: float


ZONES: tuple[Zone, ...] = (
    Zone("Europe/Berlin", "EUR", 1.0, 2, 0.12),
    Zone("Europe/Paris", "EUR", 1.0, 2, 0.08),
    Zone("Europe/Madrid", "EUR", 1.0, 2, 0.05),
    Zone("Europe/London", "GBP", 0.85, 2, 0.10),
    Zone("America/New_York", "USD", 1.1, 2, 0.14),
    Zone("America/Chicago", "USD", 1.1, 2, 0.07),
    Zone("America/Los_Angeles", "USD", 1.1, 2, 0.08),
    Zone("America/Toronto", "CAD", 1.5, 2, 0.04),
    Zone("America/Sao_Paulo", "BRL", 6.0, 2, 0.04),
    Zone("Asia/Tokyo", "JPY", 165.0, 0, 0.06),
    Zone("Asia/Kolkata", "INR", 95.0, 2, 0.05),
    Zone("Asia/Singapore", "SGD", 1.45, 2, 0.03),
    Zone("Australia/Sydney", "AUD", 1.65, 2, 0.05),
    Zone("Pacific/Auckland", "NZD", 1.8, 2, 0.02),
    Zone("Africa/Johannesburg", "ZAR", 20.0, 2, 0.03),
    Zone("Asia/Kathmandu", "NPR", 150.0, 2, 0.01),
    Zone("UTC", "EUR", 1.0, 2, 0.03),
)
