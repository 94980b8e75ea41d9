"""The ritual engine (SPEC §2 ordered time, SPEC §4 rituals and guardrails), as pure functions.

Per customer, rituals see events and timers in time order, whatever order the topics were read
in: `on_event` queues an event for ritual time, and `advance` processes every item due up to the
partition clock, timers before events at the same instant. Everything a decision depends on is
in `RitualState`, updated only in that order, so the same input gives the same decisions however
the topics interleave. The shell supplies the clock (and, in live mode, the wall clock for the
lateness guardrail); nothing here reads a clock.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import msgspec

from schemas.events import (
    EVENT_TYPES,
    TIERS,
    Click,
    Consent,
    EventBase,
    Loyalty,
    Purchase,
    Review,
    SupportContact,
    Survey,
)
from schemas.nudges import RITUALS
from stream.core.consent import Choice, apply_consent, refusal
from stream.core.rules import Rules

RITUAL_RANK = {name: i for i, name in enumerate(RITUALS)}
TYPE_RANK = {name: i for i, name in enumerate(EVENT_TYPES)}
#: ritual -> (audience, category)
META = {
    "post_purchase_welcome": ("customer", "care"),
    "three_days_later": ("customer", "care"),
    "we_noticed": ("customer", "care"),
    "anniversary": ("customer", "marketing"),
    "service_recovery": ("service_team", "recovery"),
    "referral_invite": ("customer", "marketing"),
    "loyalty_milestone": ("customer", "marketing"),
}
TIMED = frozenset({"three_days_later", "we_noticed", "anniversary"})
OUTCOME_BITS = {"came_back": 1, "reviewed": 2, "purchased": 4}
#: "clicked": a click carrying the decision's nudge_id, within the outcome window, counted once
#: per decision (unique click-through). Only delivered nudges reach customers, so a click on a
#: held-out one means a messaging system sent what it should not have.
OUTCOMES = ("decided", *OUTCOME_BITS, "clicked")
_ANCHOR_DIGEST = 8
_MAX_ANCHORS = 48
_MAX_TICKETS = 8
_MAX_CLICKABLE = 8  # recent nudges a click can be attributed to
_NUDGE_DIGEST = 16  # hex characters of the nudge_id kept to recognise it (64 bits)
DELIVERED_WINDOW_MS = 7 * 86_400_000  # the profile's "nudges delivered in the last 7 days"


class Timer(msgspec.Struct, array_like=True):
    """A decision that falls due later: a timed ritual, or one deferred by quiet hours."""

    due: int  # the instant the decision is taken as of
    ritual: str
    anchor: str
    due_at: int  # when the rule first fell due (before any quiet-hours deferral)
    source: str  # the event id that armed it
    facts: dict[str, Any] = {}
    cancelled_by: str | None = None


class Pending(msgspec.Struct, array_like=True):
    """An event waiting for ritual time: only the fields rituals read (no free text)."""

    at: int
    kind: str
    event_id: str
    key: str | None = None  # order_id (purchase, review), ticket_id, survey kind, action, nudge_id
    score: int | None = None  # rating, survey score
    status: str | None = None
    complaint: bool = False
    tz: str | None = None


class RitualState(msgspec.Struct, omit_defaults=True):
    """What rituals know of a customer, in ritual (event-time) order."""

    at: int = 0  # the latest instant processed
    last_active: int = 0
    timers: list[Timer] = []
    pending: list[Pending] = []
    anchors: bytes = b""  # digests of ritual|anchor already decided or armed
    first_purchase_at: int = 0
    first_purchase_day: str | None = None  # local date of the first purchase, ISO
    top_tier: int = -1
    open_tickets: list[str] = []  # complaint tickets currently opened or reopened
    deliveries: list[tuple[int, bool]] = []  # (decided_at, marketing) in the cap window
    referral_at: int = 0  # the last delivered or held-out referral invite
    watch: list[tuple[int, str, str, int]] = []  # (decided_at, ritual, arm, outcome bits)
    # (decided_at, ritual, arm, nudge_id prefix) of recent delivered or held-out decisions not
    # clicked yet: a click carries only the nudge_id, this says whose ritual and arm it was.
    clickable: list[tuple[int, str, str, str]] = []
    tz: str | None = None
    last: dict[str, tuple[int, str]] = {}  # ritual -> (decided_at, status) of its last decision
    delivered: list[tuple[int, str]] = []  # (decided_at, ritual) delivered within the last 7 days
    consent: dict[str, Choice] = {}  # consent as of `at` (ritual time), scope -> choice


class Step(NamedTuple):
    """What processing returns: the new state, the decisions taken, and the outcomes seen
    (ritual, arm, outcome) for the lift KPIs of SPEC §5."""

    state: RitualState
    decisions: list[dict[str, Any]]
    outcomes: list[tuple[str, str, str]]


@dataclass(frozen=True, slots=True)
class Context:
    """Inputs of a decision besides state: the rules, and the wall clock in live mode only."""

    rules: Rules
    wall_ms: int | None = None


def _copy(r: RitualState) -> RitualState:
    """A copy processing may mutate, leaving `r` intact if it raises half-way.

    Lists are copied and so are the timers (cancellation marks them in place); everything else
    is immutable or only ever replaced, never mutated. Far cheaper than a codec round trip.
    """
    replace = msgspec.structs.replace
    return replace(
        r,
        timers=[replace(t) for t in r.timers],
        pending=list(r.pending),
        deliveries=list(r.deliveries),
        watch=list(r.watch),
        open_tickets=list(r.open_tickets),
    )


# --- ids and buckets ---------------------------------------------------------------------------


def nudge_id(ritual: str, customer_id: str, anchor: str) -> str:
    return hashlib.sha256(f"{ritual}|{customer_id}|{anchor}".encode()).hexdigest()


def holdout_bucket(customer_id: str, ritual: str) -> int:
    """First 8 bytes of SHA-256 of `customer_id|ritual`, big-endian, mod 100 (SPEC §4)."""
    digest = hashlib.sha256(f"{customer_id}|{ritual}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _anchor_digest(ritual: str, anchor: str) -> bytes:
    return hashlib.blake2b(f"{ritual}|{anchor}".encode(), digest_size=_ANCHOR_DIGEST).digest()


def _known(r: RitualState, ritual: str, anchor: str) -> bool:
    d, ids = _anchor_digest(ritual, anchor), r.anchors
    return any(ids[i : i + _ANCHOR_DIGEST] == d for i in range(0, len(ids), _ANCHOR_DIGEST))


def _remember(r: RitualState, ritual: str, anchor: str) -> None:
    r.anchors = (r.anchors + _anchor_digest(ritual, anchor))[-_MAX_ANCHORS * _ANCHOR_DIGEST :]


# --- local time ----------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _zone(name: str | None) -> ZoneInfo:
    return ZoneInfo(name or "UTC")


def _local(ms: int, tz: str | None) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(_zone(tz))


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def quiet_until(ms: int, tz: str | None, rules: Rules) -> int | None:
    """If `ms` falls in quiet hours locally, the next end of quiet hours (UTC ms), else None."""
    quiet = rules.guardrails.quiet_hours
    if not quiet.enabled:
        return None
    local = _local(ms, tz)
    minute = local.hour * 60 + local.minute
    start, end = quiet.start, quiet.end
    inside = (minute >= start or minute < end) if start > end else (start <= minute < end)
    if not inside:
        return None
    day = local.date() + timedelta(days=1) if start > end and minute >= start else local.date()
    wake = datetime(day.year, day.month, day.day, end // 60, end % 60, tzinfo=_zone(tz))
    return _ms(wake)


def anniversary_due(first_day: str, year: int, tz: str | None, rules: Rules) -> int:
    """`local_time` on the `year`-th anniversary of a local date (29 Feb -> 28 Feb)."""
    d = date.fromisoformat(first_day)
    target_year = d.year + year
    day = d.day
    if d.month == 2 and d.day == 29:
        is_leap = target_year % 4 == 0 and (target_year % 100 != 0 or target_year % 400 == 0)
        day = 29 if is_leap else 28
    minutes = rules.rituals.anniversary.local_time
    local = datetime(target_year, d.month, day, minutes // 60, minutes % 60, tzinfo=_zone(tz))
    return _ms(local)


# --- decisions -----------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _day_prefix(day: int) -> str:
    """`YYYY-MM-DDT` of a day number since the epoch (a handful of days recur in a stream)."""
    t = time.gmtime(day * 86_400)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"


def _iso(ms: int) -> str:
    """RFC 3339 UTC with milliseconds (`2026-03-02T12:00:00.000Z`), built without datetime's
    isoformat: it runs for every event (the inactivity timer's facts), so the date part is
    cached per day and the time of day is plain arithmetic."""
    day, rest = divmod(ms, 86_400_000)
    seconds, milli = divmod(rest, 1000)
    hour, seconds = divmod(seconds, 3600)
    minute, seconds = divmod(seconds, 60)
    return f"{_day_prefix(day)}{hour:02d}:{minute:02d}:{seconds:02d}.{milli:03d}Z"


def decision_record(
    *,
    ritual: str,
    customer_id: str,
    anchor: str,
    due_at: int,
    decided_at: int,
    status: str,
    reason: str,
    tz: str | None,
    explanation: dict[str, Any],
    rules: Rules,
) -> dict[str, Any]:
    audience, category = META[ritual]
    return {
        "nudge_id": nudge_id(ritual, customer_id, anchor),
        "ritual": ritual,
        "rules_version": rules.version,
        "customer_id": customer_id,
        "anchor": anchor,
        "due_at": _iso(due_at),
        "decided_at": _iso(decided_at),
        "status": status,
        "reason": reason,
        "audience": audience,
        "category": category,
        "promotional": category == "marketing",
        "tz": tz or "UTC",
        "explanation": explanation,
    }


_PLAIN = (str, int, bool, type(None))
_SORTED = msgspec.json.Encoder(order="sorted")


def encode_decision(record: dict[str, Any]) -> bytes:
    """Canonical bytes: the same decision is the same bytes on any machine.

    The bytes are those of `json.dumps(record, sort_keys=True, separators=(",", ":"))`.
    msgspec writes them several times faster where the two agree by construction: values
    (and the values of a nested dict such as the explanation) that are strings, integers,
    booleans and nulls, and output that is printable ASCII with no escape at all. Anything
    else (a float, a deeper nesting, a non-ASCII or escaped character) takes `json.dumps`.
    """
    if all(
        type(v) in _PLAIN or (type(v) is dict and all(type(f) in _PLAIN for f in v.values()))
        for v in record.values()
    ):
        out = _SORTED.encode(record)
        if out.isascii() and b"\\" not in out and b"\x7f" not in out:
            return out
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


class _Run:
    """One pass over a customer's due items; collects the decisions it takes."""

    def __init__(self, r: RitualState, customer_id: str, ctx: Context) -> None:
        self.r = r
        self.customer_id = customer_id
        self.ctx = ctx
        self.rules = ctx.rules
        self.out: list[dict[str, Any]] = []
        self.outcomes: list[tuple[str, str, str]] = []

    # guardrails, in SPEC order -----------------------------------------------------------------

    def decide(
        self,
        ritual: str,
        anchor: str,
        due_at: int,
        at: int,
        facts: dict[str, Any],
        source: str,
        cancelled: str | None = None,
    ) -> None:
        r, rules = self.r, self.rules
        marketing = META[ritual][1] == "marketing"
        facts = dict(facts)
        status, reason = "delivered", "eligible"
        audience = META[ritual][0]
        default = rules.consent.marketing_default
        refused = (
            refusal(r.consent, marketing=marketing, marketing_default=default)
            if audience == "customer"
            else None
        )
        if cancelled:
            status, reason = "cancelled", cancelled
        elif (
            ritual == "referral_invite"
            and r.referral_at
            and (at - r.referral_at < rules.rituals.referral_invite.window)
        ):
            status, reason = "suppressed", "once_per_window"
            facts["previous_invite_at"] = _iso(r.referral_at)
        elif refused is not None:  # consent, before any guardrail (SPEC §4 Consent)
            status, reason = "suppressed", "no_consent"
            facts["consent_scope"] = refused.scope
            if refused.event_id is not None:
                facts["consent_event_id"] = refused.event_id
            else:
                facts["consent_default"] = default
        elif (bucket := holdout_bucket(self.customer_id, ritual)) < getattr(
            rules.rituals, ritual
        ).holdout_percent:
            status, reason = "held_out", "holdout"
            facts["holdout_bucket"] = bucket
        elif ritual != "service_recovery":
            wake = quiet_until(at, r.tz, rules)
            if wake is not None:
                facts["deferred_from"] = _iso(at)
                self._arm(Timer(wake, ritual, anchor, due_at, source, facts))
                return
            cap = rules.guardrails.frequency_cap
            recent = [m for t, m in r.deliveries if at - cap.window < t <= at]
            if len(recent) >= cap.max_delivered or (marketing and sum(recent) >= cap.max_marketing):
                status, reason = "suppressed", "frequency_cap"
                facts["delivered_in_window"] = len(recent)
                facts["marketing_in_window"] = sum(recent)
            elif (
                ritual in TIMED
                and self.ctx.wall_ms is not None
                and self.ctx.wall_ms - at > rules.guardrails.lateness
            ):
                status, reason = "expired", "lateness"
        if status == "delivered" and ritual != "service_recovery":
            window = rules.guardrails.frequency_cap.window
            r.deliveries = [(t, m) for t, m in r.deliveries if at - t < window]
            r.deliveries.append((at, marketing))
        if ritual == "referral_invite" and status in {"delivered", "held_out"}:
            r.referral_at = at
        facts["source_event_id"] = source
        self._record(ritual, at, status)
        if status in {"delivered", "held_out"}:
            arm = "treated" if status == "delivered" else "held_out"
            r.watch = [*r.watch, (at, ritual, arm, 0)]
            nid = nudge_id(ritual, self.customer_id, anchor)[:_NUDGE_DIGEST]
            r.clickable = [*r.clickable, (at, ritual, arm, nid)][-_MAX_CLICKABLE:]
            self.outcomes.append((ritual, arm, "decided"))
        self.out.append(
            decision_record(
                ritual=ritual,
                customer_id=self.customer_id,
                anchor=anchor,
                due_at=due_at,
                decided_at=at,
                status=status,
                reason=reason,
                tz=r.tz,
                explanation=facts,
                rules=rules,
            )
        )

    def _record(self, ritual: str, at: int, status: str) -> None:
        """The profile's per-ritual last decision and its recent deliveries (SPEC §3)."""
        r = self.r
        r.last = {**r.last, ritual: (at, status)}
        if status == "delivered":
            r.delivered = [(t, name) for t, name in r.delivered if at - t < DELIVERED_WINDOW_MS] + [
                (at, ritual)
            ]

    def trigger(
        self, ritual: str, anchor: str, at: int, facts: dict[str, Any], source: str
    ) -> None:
        """An immediate ritual: decided at the triggering event's time, once per anchor."""
        if not getattr(self.rules.rituals, ritual).enabled or _known(self.r, ritual, anchor):
            return
        _remember(self.r, ritual, anchor)
        self.decide(ritual, anchor, at, at, facts, source)

    def _arm(self, timer: Timer) -> None:
        self.r.timers.append(timer)

    def arm(self, timer: Timer) -> None:
        """A timed ritual, once per anchor."""
        if not getattr(self.rules.rituals, timer.ritual).enabled:
            return
        if _known(self.r, timer.ritual, timer.anchor):
            return
        _remember(self.r, timer.ritual, timer.anchor)
        self._arm(timer)

    # items -------------------------------------------------------------------------------------

    def fire(self, timer: Timer) -> None:
        r = self.r
        facts = dict(timer.facts)
        cancelled = None
        if timer.cancelled_by:
            facts["cancelled_by_event_id"] = timer.cancelled_by
            cancelled = facts.pop("cancel_reason", "cancelled")
        if timer.ritual == "referral_invite" and r.open_tickets and not cancelled:
            cancelled = "open_complaint"
            facts["open_complaints"] = len(r.open_tickets)
        self.decide(
            timer.ritual, timer.anchor, timer.due_at, timer.due, facts, timer.source, cancelled
        )
        if timer.ritual == "anniversary":  # the next year's, once (anchors dedupe re-arming)
            self._arm_anniversary(timer.facts["year"] + 1, timer.source)

    def apply(self, ev: Pending) -> None:
        """An event's effect on rituals, at its instant in ritual time."""
        r = self.r
        if ev.kind == "consent":  # a preference, not activity: no outcome, no timer moves
            if ev.tz is not None and ev.tz != r.tz:
                r.tz = ev.tz
                self._rearm_anniversary()
            r.consent = apply_consent(
                r.consent, scope=ev.key or "", status=ev.status or "", at=ev.at,
                event_id=ev.event_id,
            )  # fmt: skip
            return
        self._outcomes(ev)
        if r.clickable:
            self._click_through(ev)
        if ev.tz is not None and ev.tz != r.tz:
            r.tz = ev.tz
            self._rearm_anniversary()
        self._activity(ev)
        if ev.kind == "purchase":
            self._purchase(ev)
        elif ev.kind == "review":
            self._cancel_check_ins(ev, order_id=ev.key, reason="review_of_order")
            if ev.score is not None and ev.score <= self.rules.rituals.service_recovery.rating_max:
                self.trigger(
                    "service_recovery",
                    ev.event_id,
                    ev.at,
                    {"trigger": "review", "rating": ev.score},
                    ev.event_id,
                )
            if ev.score is not None and ev.score >= self.rules.rituals.referral_invite.rating_min:
                self._referral(ev, {"trigger": "review", "rating": ev.score})
        elif ev.kind == "support_contact":
            self._support(ev)
        elif ev.kind == "survey":
            self._survey(ev)
        elif ev.kind == "loyalty" and ev.key == "tier_changed" and ev.status in TIERS:
            rank = TIERS.index(ev.status)
            if rank > r.top_tier:
                previous = TIERS[r.top_tier] if r.top_tier >= 0 else None
                r.top_tier = rank
                self.trigger(
                    "loyalty_milestone",
                    f"tier-{ev.status}",
                    ev.at,
                    {"tier": ev.status, "previous_top_tier": previous},
                    ev.event_id,
                )

    def _outcomes(self, ev: Pending) -> None:
        """Count, once per decision, what the customer did within the outcome window."""
        window = self.rules.outcome_window
        bits = OUTCOME_BITS["came_back"]
        if ev.kind == "review":
            bits |= OUTCOME_BITS["reviewed"]
        elif ev.kind == "purchase":
            bits |= OUTCOME_BITS["purchased"]
        kept = []
        for at, ritual, arm, seen in self.r.watch:
            if ev.at > at + window:
                continue  # the window has closed
            if ev.at > at:
                for name, bit in OUTCOME_BITS.items():
                    if bits & bit and not seen & bit:
                        self.outcomes.append((ritual, arm, name))
                seen |= bits
            kept.append((at, ritual, arm, seen))
        self.r.watch = kept

    def _click_through(self, ev: Pending) -> None:
        """A click carrying the nudge_id of a recent decision: that decision's click-through,
        counted once. Decisions older than the outcome window are forgotten."""
        window = self.rules.outcome_window
        nid = ev.key[:_NUDGE_DIGEST] if ev.kind == "click" and ev.key else None
        kept = []
        for item in self.r.clickable:
            at, ritual, arm, digest = item
            if ev.at > at + window:
                continue
            if nid is not None and digest == nid and ev.at >= at:
                self.outcomes.append((ritual, arm, "clicked"))
                nid = None  # one decision per click
                continue
            kept.append(item)
        self.r.clickable = kept

    def _activity(self, ev: Pending) -> None:
        r = self.r
        rule = self.rules.rituals.we_noticed
        for timer in r.timers:  # a deferred "we noticed" is moot once the customer is back
            if timer.ritual == "we_noticed" and timer.due_at <= ev.at and not timer.cancelled_by:
                timer.cancelled_by = ev.event_id
                timer.facts = {**timer.facts, "cancel_reason": "activity_resumed"}
        if ev.at < r.last_active:
            return
        r.last_active = ev.at
        r.timers = [t for t in r.timers if t.ritual != "we_noticed" or t.due_at <= ev.at]
        if rule.enabled:
            due = ev.at + rule.inactivity
            facts = {
                "last_event_id": ev.event_id,
                "last_seen": _iso(ev.at),
                "inactive_for_s": rule.inactivity // 1000,
            }
            self._arm(Timer(due, "we_noticed", ev.event_id, due, ev.event_id, facts))

    def _purchase(self, ev: Pending) -> None:
        r = self.r
        order = ev.key or ev.event_id
        if r.first_purchase_at == 0:
            r.first_purchase_at = ev.at
            r.first_purchase_day = _local(ev.at, r.tz).date().isoformat()
            self.trigger(
                "post_purchase_welcome", "first_purchase", ev.at, {"order_id": order}, ev.event_id
            )
            self._arm_anniversary(1, ev.event_id)
        delay = self.rules.rituals.three_days_later.delay
        self.arm(
            Timer(
                ev.at + delay,
                "three_days_later",
                order,
                ev.at + delay,
                ev.event_id,
                {"order_id": order, "purchase_at": _iso(ev.at)},
            )
        )

    def _arm_anniversary(self, year: int, source: str) -> None:
        r = self.r
        if r.first_purchase_day is None:
            return
        due = anniversary_due(r.first_purchase_day, year, r.tz, self.rules)
        facts = {"year": year, "first_purchase_day": r.first_purchase_day}
        self.arm(Timer(due, "anniversary", f"year-{year}", due, source, facts))

    def _rearm_anniversary(self) -> None:
        """A new time zone moves the pending anniversary to 10:00 in that zone."""
        r = self.r
        for i, t in enumerate(r.timers):
            if (
                t.ritual == "anniversary"
                and "deferred_from" not in t.facts
                and r.first_purchase_day
            ):
                due = anniversary_due(r.first_purchase_day, t.facts["year"], r.tz, self.rules)
                if due > r.at:
                    r.timers[i] = msgspec.structs.replace(t, due=due, due_at=due)

    def _cancel_check_ins(self, ev: Pending, *, order_id: str | None, reason: str) -> None:
        for timer in self.r.timers:
            if timer.ritual != "three_days_later" or timer.cancelled_by:
                continue
            if order_id is None or timer.anchor == order_id:
                timer.cancelled_by = ev.event_id
                timer.facts = {**timer.facts, "cancel_reason": reason}

    def _support(self, ev: Pending) -> None:
        r = self.r
        ticket = ev.key or ""
        if ev.status == "opened":
            self._cancel_check_ins(ev, order_id=None, reason="support_contact_opened")
        if ev.complaint and ev.status in {"opened", "reopened"}:
            if ticket not in r.open_tickets:
                r.open_tickets = [*r.open_tickets, ticket][-_MAX_TICKETS:]
        elif ev.status == "resolved" and ticket in r.open_tickets:
            r.open_tickets = [t for t in r.open_tickets if t != ticket]
        if ev.complaint and ev.status == "opened":
            self.trigger(
                "service_recovery",
                ev.event_id,
                ev.at,
                {"trigger": "complaint_opened", "ticket_id": ticket},
                ev.event_id,
            )

    def _survey(self, ev: Pending) -> None:
        rr = self.rules.rituals
        score = ev.score if ev.score is not None else -1
        if ev.key == "nps":
            if score <= rr.service_recovery.nps_max:
                self.trigger(
                    "service_recovery",
                    ev.event_id,
                    ev.at,
                    {"trigger": "nps", "score": score},
                    ev.event_id,
                )
            if score >= rr.referral_invite.nps_min:
                self._referral(ev, {"trigger": "nps", "score": score})
        elif ev.key == "csat" and score <= rr.service_recovery.csat_max:
            self.trigger(
                "service_recovery",
                ev.event_id,
                ev.at,
                {"trigger": "csat", "score": score},
                ev.event_id,
            )

    def _referral(self, ev: Pending, facts: dict[str, Any]) -> None:
        r = self.r
        anchor = ev.event_id
        if not self.rules.rituals.referral_invite.enabled or _known(r, "referral_invite", anchor):
            return
        _remember(r, "referral_invite", anchor)
        cancelled = None
        if r.open_tickets:
            cancelled = "open_complaint"
            facts = {**facts, "open_complaints": len(r.open_tickets)}
        self.decide("referral_invite", anchor, ev.at, ev.at, facts, ev.event_id, cancelled)


def pending_of(event: EventBase, at: int) -> Pending:
    """The ritual-relevant part of an event."""
    p = Pending(at=at, kind=event.type, event_id=event.event_id, tz=event.tz)  # type: ignore[attr-defined]
    if isinstance(event, Click):
        p.key = event.nudge_id
    elif isinstance(event, Purchase):
        p.key = event.order_id
    elif isinstance(event, Review):
        p.key, p.score = event.order_id, event.rating
    elif isinstance(event, SupportContact):
        p.key, p.status, p.complaint = event.ticket_id, event.status, event.complaint
    elif isinstance(event, Survey):
        p.key, p.score = event.survey, event.score
    elif isinstance(event, Loyalty):
        p.key, p.status = event.action, event.tier
    elif isinstance(event, Consent):
        p.key, p.status = event.scope, event.status
    return p


def _timer_order(t: Timer) -> tuple[int, int, int, str]:
    return (t.due, 0, RITUAL_RANK[t.ritual], t.anchor)


def _pending_order(p: Pending) -> tuple[int, int, int, str]:
    return (p.at, 1, TYPE_RANK[p.kind], p.event_id)


def next_due(r: RitualState) -> int | None:
    """The earliest instant this customer has something to process, if any."""
    times = [t.due for t in r.timers] + [p.at for p in r.pending]
    return min(times) if times else None


def advance(r: RitualState, customer_id: str, clock: int, ctx: Context) -> Step:
    """Process every timer and queued event due at or before `clock`, in ritual order."""
    due = next_due(r)
    if due is None or due > clock:
        return Step(r, [], [])
    return _advance_owned(_copy(r), customer_id, clock, ctx)


def _advance_owned(s: RitualState, customer_id: str, clock: int, ctx: Context) -> Step:
    """`advance` on a state the caller already copied (`on_event`): one copy per event."""
    run = _Run(s, customer_id, ctx)
    while True:
        timers = [t for t in s.timers if t.due <= clock]
        events = [p for p in s.pending if p.at <= clock]
        if not timers and not events:
            break
        first_timer = min(timers, key=_timer_order) if timers else None
        first_event = min(events, key=_pending_order) if events else None
        if first_timer is not None and (
            first_event is None or _timer_order(first_timer) < _pending_order(first_event)
        ):
            s.timers.remove(first_timer)
            s.at = max(s.at, first_timer.due)
            run.fire(first_timer)
        else:
            assert first_event is not None
            s.pending.remove(first_event)
            s.at = max(s.at, first_event.at)
            run.apply(first_event)
    return Step(s, run.out, run.outcomes)


def on_event(
    r: RitualState, customer_id: str, event: EventBase, at: int, clock: int, ctx: Context
) -> Step:
    """Queue an accepted event for ritual time, then process whatever is due by `clock`.

    An event at or before the clock is processed at once (a late one cannot change a decision
    already taken: those are records); one ahead of it waits for the clock to reach it.
    """
    s = _copy(r)
    s.pending.append(pending_of(event, at))
    return _advance_owned(s, customer_id, clock, ctx)
