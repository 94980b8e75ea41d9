"""The vocabulary of things a simulated customer can be scheduled to do.

Shared by the simulation (which schedules and carries them out) and the reaction logic (which
plans them in answer to a nudge), so a reaction is data the tests can inspect, not a side
effect. One scheduled action produces at most one event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Kind(IntEnum):
    """Scheduled actions. Recurring ones (marked *) reschedule themselves when they run."""

    ARRIVE = 0  # the customer enters the simulation: start the routines below
    SESSION = 1  # * browse: a session of clicks
    SHOP = 2  # * a shopping session that ends in a purchase
    NEWSLETTER = 3  # * a marketing email arrives: maybe email_open, maybe email_click + visit
    NPS_INVITE = 4  # * an NPS survey invitation: maybe an answer later
    TICKET = 5  # * a support ticket opens (or, with data, one about an order)
    REFERRAL = 6  # * a member refers a friend (or, with data, once)
    CLICK = 7  # the next click of a session in progress
    PURCHASE = 8
    REDEEM = 9  # points_redeemed at checkout
    EARN = 10  # points_earned for an order
    TIER = 11  # tier_changed
    REVIEW = 12
    SURVEY = 13
    FOLLOW = 14  # a later contact on a ticket: resolved or reopened
    JOIN = 15  # joins the loyalty programme
    CONVERT = 16  # a referral converts
    CHURN = 17  # falls silent for good
    GAP = 18  # falls silent for a while (win-backs)
    RESUME = 19  # silent no more: regular routines start again
    VISIT = 20  # a one-off browsing session
    PROMPTED = 21  # a click caused by a nudge: carries the nudge_id
    VISIT_SHOP = 22  # a one-off shopping session that ends in a purchase
    CONSENT = 23  # a consent change: data has scope, status and source


@dataclass(frozen=True, slots=True)
class Planned:
    """One action planned for a customer at a simulated instant (ms since the epoch, UTC)."""

    at_ms: int
    kind: Kind
    data: dict[str, Any] = field(default_factory=dict)
