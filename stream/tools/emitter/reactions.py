"""How simulated customers answer the nudges the processor delivers (SPEC §4).

`react` is a pure function of (customer snapshot, nudge, rng, simulated now): it returns the
actions to schedule, and the Kafka listener is a thin shell around it. That keeps the closed
loop testable without a broker, and it keeps lift honest: held-out customers never receive a
nudge (the processor does not deliver to them), so only treated customers get these extra
chances to come back, review, refer or have a complaint put right.

Every reaction starts with a *prompted* interaction, an `email_open` click carrying the
`nudge_id` (and often an `email_click` too), and the reaction proper follows it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from stream.core.vocabulary import Status
from stream.tools.emitter.actions import Kind, Planned
from stream.tools.emitter.personas import Persona

_MINUTE = 60_000
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
#: Service recovery closes at most this many open tickets at once (bounded plans).
_MAX_RECOVERED_TICKETS = 3


@dataclass(frozen=True, slots=True)
class Nudge:
    """The fields of a SPEC §4 nudge record the simulation uses."""

    nudge_id: str
    ritual: str
    customer_id: str
    decided_at_ms: int
    status: str = Status.DELIVERED
    anchor: str = ""
    category: str = ""

    @classmethod
    def from_record(cls, record: Any) -> Nudge | None:
        """Parse a decoded JSON record; None when it is not a usable nudge (never raises)."""
        if not isinstance(record, dict):
            return None
        try:
            decided = datetime.fromisoformat(str(record["decided_at"]))
            if decided.tzinfo is None:
                return None
            fields = [record["nudge_id"], record["ritual"], record["customer_id"]]
            if not all(isinstance(f, str) and f for f in fields):
                return None
            return cls(
                nudge_id=record["nudge_id"],
                ritual=record["ritual"],
                customer_id=record["customer_id"],
                decided_at_ms=int(decided.timestamp() * 1000),
                status=str(record.get("status", Status.DELIVERED)),
                anchor=str(record.get("anchor") or ""),
                category=str(record.get("category") or ""),
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            return None


@dataclass(frozen=True, slots=True)
class CustomerView:
    """What a reaction may know about the customer, as of the simulated now."""

    customer_id: str
    persona: Persona
    silent: bool = False  # churned, or lapsed in a win-back gap
    member: bool = False  # in the loyalty programme
    unreviewed_orders: tuple[str, ...] = ()  # recent orders with no review done or planned
    open_tickets: tuple[str, ...] = ()  # tickets whose latest status is opened or reopened


def react(
    customer: CustomerView | None, nudge: Nudge, rng: random.Random, now_ms: int
) -> list[Planned]:
    """The actions a delivered nudge causes, in time order, none before `now_ms`.

    Times are relative to the nudge's `decided_at` (simulated time, when the message went out):
    the customer opens it minutes to hours later. If the processor decided it long before the
    simulated now (a lagging consumer), the whole plan is shifted, spacing kept, to start
    just after now: a simulated customer cannot act in the simulated past.
    """
    if customer is None or nudge.customer_id != customer.customer_id:
        return []
    if nudge.status != Status.DELIVERED:
        return []
    p = customer.persona
    if rng.random() >= p.open_rate:
        return []
    nid = nudge.nudge_id
    t = nudge.decided_at_ms + rng.randrange(5 * _MINUTE, 12 * _HOUR)
    plan = [Planned(t, Kind.PROMPTED, {"action": "email_open", "nudge_id": nid})]
    clicked = rng.random() < p.click_rate
    if clicked:
        t += rng.randrange(10_000, 10 * _MINUTE)
        plan.append(Planned(t, Kind.PROMPTED, {"action": "email_click", "nudge_id": nid}))
    t += rng.randrange(_MINUTE, 5 * _MINUTE)
    plan += _ritual_effect(customer, nudge, rng, t, clicked)
    first = plan[0].at_ms
    if first <= now_ms:
        shift = now_ms + 1 - first
        plan = [replace(step, at_ms=step.at_ms + shift) for step in plan]
    return plan


def _ritual_effect(
    customer: CustomerView, nudge: Nudge, rng: random.Random, t: int, clicked: bool
) -> list[Planned]:
    """The reaction proper, after the prompted click(s); persona rates from the table."""
    p = customer.persona
    ritual = nudge.ritual
    if ritual == "we_noticed":
        if rng.random() >= p.return_rate:
            return []
        plan = [Planned(t, Kind.VISIT)]
        if customer.silent and rng.random() < p.resume_rate:
            plan.append(Planned(t + _HOUR, Kind.RESUME))
        return plan
    if ritual == "three_days_later":
        order = nudge.anchor
        if order in customer.unreviewed_orders and rng.random() < p.checkin_review_rate:
            return [Planned(t + rng.randrange(10 * _MINUTE, 2 * _DAY), Kind.REVIEW,
                            {"order_id": order})]  # fmt: skip
        return []
    if ritual == "service_recovery":
        if customer.open_tickets:
            return [
                Planned(t + rng.randrange(_HOUR, _DAY) + i, Kind.FOLLOW,
                        {"ticket_id": ticket, "op": "resolve", "recovered": True})
                for i, ticket in enumerate(customer.open_tickets[:_MAX_RECOVERED_TICKETS])
            ]  # fmt: skip
        if rng.random() < p.recovery_csat_rate:
            return [Planned(t + rng.randrange(_HOUR, 2 * _DAY), Kind.SURVEY,
                            {"survey": "csat", "bias": 1})]  # fmt: skip
        return []
    if ritual == "referral_invite":
        if rng.random() >= p.invite_referral_rate:
            return []
        plan = [] if customer.member else [Planned(t, Kind.JOIN)]
        plan.append(Planned(t + _MINUTE, Kind.REFERRAL, {"once": True}))
        return plan
    if ritual == "anniversary" and rng.random() < p.anniversary_purchase_rate:
        return [Planned(t, Kind.VISIT_SHOP)]
    # post_purchase_welcome, loyalty_milestone, anniversary without a purchase, and rituals
    # this emitter does not know yet: a click-through leads to a short visit.
    return [Planned(t, Kind.VISIT)] if clicked else []
