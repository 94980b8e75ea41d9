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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
from stream.core.consent import Choice, apply_consent, refusal
from stream.core.decision import Decision
from stream.core.logic import Outcome, Step
from stream.core.ritual_defs import Compiled, OnEvent, Program, holds
from stream.core.rules import Rules, load_rules
from stream.core.vocabulary import TAKEN, Status

TYPE_RANK = {name: i for i, name in enumerate(EVENT_TYPES)}
#: The packaged rituals, in tie-breaking order (a rules file may add its own after them).
RITUALS: tuple[str, ...] = tuple(load_rules().rituals)
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
    action: str | None = None  # a click's action


class Idle(msgspec.Struct, array_like=True):
    """The inactivity rituals waiting on the customer's latest activity, kept implicit.

    Every activity restarts every inactivity ritual's spell, so an eager timer per ritual
    would be built, stored and thrown away with nearly every event. This holds only what
    building them needs: the activity (`at`, `event_id`, `kind`) and, per enabled inactivity
    ritual, when its spell ends (`waiting`: (due, ritual), by due then rank). An entry becomes
    a real `Timer` (`_materialize`, with the facts and anchor of the rules in force at `at`)
    when it falls due, or when something must see it among the timers (a cancel rule, a wait).
    Never mutated: replaced, so states share it safely (`_copy`)."""

    at: int
    event_id: str
    kind: str
    waiting: list[tuple[int, str]] = []


class RitualState(msgspec.Struct, omit_defaults=True):
    """What rituals know of a customer, in ritual (event-time) order."""

    at: int = 0  # the latest instant processed
    last_active: int = 0
    timers: list[Timer] = []
    idle: Idle | None = None  # inactivity rituals' pending spells, not yet timers
    pending: list[Pending] = []
    anchors: bytes = b""  # digests of ritual|anchor already decided or armed
    first_purchase_at: int = 0
    first_purchase_day: str | None = None  # local date of the first purchase, ISO
    top_tier: int = -1
    open_tickets: list[str] = []  # complaint tickets currently opened or reopened
    deliveries: list[tuple[int, bool]] = []  # (decided_at, marketing) in the cap window
    watch: list[tuple[int, str, str, int]] = []  # (decided_at, ritual, arm, outcome bits)
    # (decided_at, ritual, arm, nudge_id prefix) of recent delivered or held-out decisions not
    # clicked yet: a click carries only the nudge_id, this says whose ritual and arm it was.
    clickable: list[tuple[int, str, str, str]] = []
    tz: str | None = None
    last: dict[str, tuple[int, str]] = {}  # ritual -> (decided_at, status) of its last decision
    delivered: list[tuple[int, str]] = []  # (decided_at, ritual) delivered within the last 7 days
    consent: dict[str, Choice] = {}  # consent as of `at` (ritual time), scope -> choice
    # ritual -> its last delivered or held-out decision, for rituals with a once-per window
    windows: dict[str, int] = {}


@dataclass(frozen=True, slots=True)
class Context:
    """Inputs of a decision besides state: the rules, and the wall clock in live mode only."""

    rules: Rules
    wall_ms: int | None = None
    program: Program = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "program", self.rules.program)  # compiled once per rules


def _copy(r: RitualState) -> RitualState:
    """A copy processing may mutate, leaving `r` intact if it raises half-way.

    Lists are copied; everything else, timers included, is immutable or only ever replaced,
    never mutated (a cancellation replaces the timer in the copied list: `_cancelled`). Far
    cheaper than a codec round trip.
    """
    return msgspec.structs.replace(
        r,
        timers=list(r.timers),
        pending=list(r.pending),
        deliveries=list(r.deliveries),
        watch=list(r.watch),
        open_tickets=list(r.open_tickets),
    )


# --- ids and buckets ---------------------------------------------------------------------------


def _cancelled(timer: Timer, event_id: str, reason: str) -> Timer:
    """The timer cancelled by an event, as a new timer (timers are shared with the state the
    step started from, which stays intact)."""
    return msgspec.structs.replace(
        timer, cancelled_by=event_id, facts={**timer.facts, "cancel_reason": reason}
    )


def _materialize(idle: Idle, due: int, name: str, rules: Rules) -> Timer:
    """An inactivity ritual's waiting spell as the timer an eager arm would have built at the
    activity: facts and anchor from the rules in force at `idle.at`."""
    ritual = rules.at(idle.at).program.by_name[name]
    trigger = ritual.inactivity
    assert trigger is not None
    fields = {"event_id": idle.event_id, "type": idle.kind, "at": _iso(idle.at),
              "inactivity_s": trigger.inactivity // 1000}  # fmt: skip
    facts = ritual.facts[id(trigger)](fields)
    return Timer(due, name, str(ritual.anchor(fields)), due, idle.event_id, facts)


def _materialize_due(r: RitualState, clock: int, rules: Rules) -> None:
    """Every waiting spell due by `clock` becomes a timer (the idle is replaced, not changed)."""
    idle = r.idle
    assert idle is not None
    waiting = idle.waiting
    n = 0
    while n < len(waiting) and waiting[n][0] <= clock:
        due, name = waiting[n]
        r.timers.append(_materialize(idle, due, name, rules))
        n += 1
    r.idle = msgspec.structs.replace(idle, waiting=waiting[n:]) if n < len(waiting) else None


def _materialize_ritual(r: RitualState, name: str, rules: Rules) -> None:
    """The ritual's waiting spell, if any, becomes a timer: code about to look for the
    ritual's timers by name sees it where an eager arm would have put it."""
    idle = r.idle
    if idle is None or all(entry[1] != name for entry in idle.waiting):
        return
    kept = []
    for due, ritual in idle.waiting:
        if ritual == name:
            r.timers.append(_materialize(idle, due, ritual, rules))
        else:
            kept.append((due, ritual))
    r.idle = msgspec.structs.replace(idle, waiting=kept) if kept else None


def timers_of(r: RitualState, rules: Rules) -> list[Timer]:
    """Every timer the customer has pending, the implicit inactivity spells built as timers:
    what an inspection (an erasure plan, a stored state's meaning) counts as its timers."""
    idle = r.idle
    if idle is None:
        return list(r.timers)
    return [*r.timers, *(_materialize(idle, due, name, rules) for due, name in idle.waiting)]


def timer_count(r: RitualState) -> int:
    """How many timers the customer has pending, implicit inactivity spells included."""
    return len(r.timers) + (len(r.idle.waiting) if r.idle is not None else 0)


def nudge_id(ritual: str, customer_id: str, anchor: str) -> str:
    return hashlib.sha256(f"{ritual}|{customer_id}|{anchor}".encode()).hexdigest()


@lru_cache(maxsize=4096)
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


def anniversary_due(first_day: str, year: int, tz: str | None, minutes: int) -> int:
    """`minutes` after local midnight on the `year`-th anniversary of a local date
    (29 Feb -> 28 Feb in common years)."""
    d = date.fromisoformat(first_day)
    target_year = d.year + year
    day = d.day
    if d.month == 2 and d.day == 29:
        is_leap = target_year % 4 == 0 and (target_year % 100 != 0 or target_year % 400 == 0)
        day = 29 if is_leap else 28
    local = datetime(target_year, d.month, day, minutes // 60, minutes % 60, tzinfo=_zone(tz))
    return _ms(local)


# --- decisions -----------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _day_prefix(day: int) -> str:
    """`YYYY-MM-DDT` of a day number since the epoch (a handful of days recur in a stream)."""
    t = time.gmtime(day * 86_400)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"


_HH_MM = tuple(f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60))  # by minute of day
_SS = tuple(f"{s:02d}." for s in range(60))
_MMM = tuple(f"{ms:03d}Z" for ms in range(1000))


def _iso(ms: int) -> str:
    """RFC 3339 UTC with milliseconds (`2026-03-02T12:00:00.000Z`), built without datetime's
    isoformat: it runs for every inactivity spell built as a timer, so the date part is
    cached per day and the time of day is three lookups in small tables of its parts."""
    day, rest = divmod(ms, 86_400_000)
    seconds, milli = divmod(rest, 1000)
    minute, seconds = divmod(seconds, 60)
    return _day_prefix(day) + _HH_MM[minute] + _SS[seconds] + _MMM[milli]


def wait_due(at: int, *, for_ms: int | None, until: int | None, tz: str | None) -> int:
    """When a wait that starts at `at` ends: `for_ms` later, then the next local `until`."""
    due = at + (for_ms or 0)
    if until is None:
        return due
    local = _local(due, tz)
    target = local.replace(hour=until // 60, minute=until % 60, second=0, microsecond=0)
    if target <= local:
        day = local.date() + timedelta(days=1)
        target = datetime(day.year, day.month, day.day, until // 60, until % 60, tzinfo=_zone(tz))
    return _ms(target)


def decision_record(
    *,
    ritual: Compiled,
    customer_id: str,
    anchor: str,
    due_at: int,
    decided_at: int,
    status: Status,
    reason: str,
    tz: str | None,
    explanation: dict[str, Any],
    rules: Rules,
) -> Decision:
    """One decision record; `template` is set only when the ritual names one."""
    return Decision(
        nudge_id=nudge_id(ritual.name, customer_id, anchor),
        ritual=ritual.name,
        rules_version=rules.version,
        customer_id=customer_id,
        anchor=anchor,
        due_at=_iso(due_at),
        decided_at=_iso(decided_at),
        status=status,
        reason=reason,
        audience=ritual.audience,
        category=ritual.category,
        promotional=ritual.category == "marketing",
        tz=tz or "UTC",
        explanation=explanation,
        template=ritual.d.template,
    )


# --- guardrails ----------------------------------------------------------------------------------


class Verdict(NamedTuple):
    """A guardrail's answer that settles a decision: its status, its reason, and the facts
    that join the explanation."""

    status: Status
    reason: str
    facts: Mapping[str, Any]  # read, never changed: the decision copies them


class Defer(NamedTuple):
    """A guardrail's answer that puts a decision off: taken again at `until`, its explanation
    carrying `facts`."""

    until: int
    facts: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Due:
    """What the guardrails see of a decision falling due: the ritual, the instant it is taken
    as of, a cancellation found before, and the customer (state, id) with the rules and wall
    clock in force."""

    ritual: Compiled
    at: int
    cancelled: str | None
    r: RitualState
    customer_id: str
    rules: Rules
    wall_ms: int | None

    @property
    def customer_facing(self) -> bool:
        """Sent to the customer (consent and the customer guardrails apply), not to a team."""
        return self.ritual.audience == "customer"


#: A guardrail: None to let the decision through to the next, else a verdict or a deferral.
Guardrail = Callable[[Due], Verdict | Defer | None]


def cancelled(due: Due) -> Verdict | None:
    """A cancel rule or `cancel_if` condition matched before the decision fell due."""
    return Verdict(Status.CANCELLED, due.cancelled, {}) if due.cancelled else None


def once_per_window(due: Due) -> Verdict | None:
    """The ritual's `once_per` window since its last delivered or held-out decision."""
    once_per = due.ritual.d.once_per
    if once_per is None:
        return None
    previous = due.r.windows.get(due.ritual.name, 0)
    if previous and due.at - previous < once_per:
        return Verdict(Status.SUPPRESSED, "once_per_window", {"previous_invite_at": _iso(previous)})
    return None


def consent(due: Due) -> Verdict | None:
    """The customer's consent as of the decision instant (customer-facing rituals only)."""
    if not due.customer_facing:
        return None
    default = due.rules.consent.marketing_default
    refused = refusal(
        due.r.consent, marketing=due.ritual.marketing_consent, marketing_default=default
    )
    if refused is None:
        return None
    facts: dict[str, Any] = {"consent_scope": refused.scope}
    if refused.event_id is not None:
        facts["consent_event_id"] = refused.event_id
    else:
        facts["consent_default"] = default
    return Verdict(Status.SUPPRESSED, "no_consent", facts)


def holdout(due: Due) -> Verdict | None:
    """The customer's fixed bucket for the ritual falls in its holdout share."""
    bucket = holdout_bucket(due.customer_id, due.ritual.name)
    if bucket < due.ritual.d.holdout_percent:
        return Verdict(Status.HELD_OUT, "holdout", {"holdout_bucket": bucket})
    return None


def quiet_hours(due: Due) -> Defer | None:
    """Local quiet hours put a customer-facing decision off to their end."""
    if not due.customer_facing:
        return None
    wake = quiet_until(due.at, due.r.tz, due.rules)
    return Defer(wake, {"deferred_from": _iso(due.at)}) if wake is not None else None


def frequency_cap(due: Due) -> Verdict | None:
    """Too many customer-facing deliveries (or marketing ones) within the cap's window."""
    if not due.customer_facing:
        return None
    cap, at = due.rules.guardrails.frequency_cap, due.at
    recent = [m for t, m in due.r.deliveries if at - cap.window < t <= at]
    if len(recent) >= cap.max_delivered or (
        due.ritual.marketing and sum(recent) >= cap.max_marketing
    ):
        facts = {"delivered_in_window": len(recent), "marketing_in_window": sum(recent)}
        return Verdict(Status.SUPPRESSED, "frequency_cap", facts)
    return None


def lateness(due: Due) -> Verdict | None:
    """A timed customer-facing decision taken too long after its instant (live mode only)."""
    wall = due.wall_ms
    if (
        due.customer_facing
        and due.ritual.timed
        and wall is not None
        and wall - due.at > due.rules.guardrails.lateness
    ):
        return Verdict(Status.EXPIRED, "lateness", {})
    return None


#: The order a decision goes through them; the first that does not pass settles (or defers) it.
#: The ritual's own rules first (cancellation, once-per window), then consent before any
#: guardrail, then the holdout, which settles a held-out decision before the guardrails that
#: only deliveries meet (quiet hours, the frequency cap, lateness).
GUARDRAILS: tuple[Guardrail, ...] = (
    cancelled,
    once_per_window,
    consent,
    holdout,
    quiet_hours,
    frequency_cap,
    lateness,
)


def verdict(due: Due, guardrails: tuple[Guardrail, ...] = GUARDRAILS) -> Verdict | Defer:
    """The first guardrail's answer that is not a pass; `delivered`, `eligible` if none."""
    for guardrail in guardrails:
        answer = guardrail(due)
        if answer is not None:
            return answer
    return _ELIGIBLE


_ELIGIBLE = Verdict(Status.DELIVERED, "eligible", {})


class _Fields:
    """An event's fields as conditions, anchors and facts name them (read on demand), with
    the values derived from the customer's state just before the event."""

    __slots__ = ("_derived", "_ev", "_r")

    def __init__(self, ev: Pending, r: RitualState, derived: dict[str, Any]) -> None:
        self._ev = ev
        self._r = r
        self._derived = derived

    def __getitem__(self, name: str) -> Any:
        ev = self._ev
        if name in self._derived:
            return self._derived[name]
        getter = _FIELD_OF.get((ev.kind, name))
        if getter is not None:
            return getter(ev)
        if name == "event_id":
            return ev.event_id
        if name == "type":
            return ev.kind
        if name == "at":
            return _iso(ev.at)
        if name == "open_complaints":
            return len(self._r.open_tickets)
        if name == "first_purchase_day":
            return self._r.first_purchase_day
        return None


_FIELD_OF: dict[tuple[str, str], Any] = {
    ("click", "action"): lambda p: p.action,
    ("click", "nudge_id"): lambda p: p.key,
    ("purchase", "order_id"): lambda p: p.key,
    ("review", "order_id"): lambda p: p.key,
    ("review", "rating"): lambda p: p.score,
    ("support_contact", "ticket_id"): lambda p: p.key,
    ("support_contact", "status"): lambda p: p.status,
    ("support_contact", "complaint"): lambda p: p.complaint,
    ("survey", "survey"): lambda p: p.key,
    ("survey", "score"): lambda p: p.score,
    ("loyalty", "action"): lambda p: p.key,
    ("loyalty", "tier"): lambda p: p.status,
}


class _State:
    """The customer state a `cancel_if` condition tests."""

    __slots__ = ("_r",)

    def __init__(self, r: RitualState) -> None:
        self._r = r

    def __getitem__(self, name: str) -> Any:
        return len(self._r.open_tickets) if name == "open_complaints" else None


class _Run:
    """One pass over a customer's due items: the generic evaluator of the rules' rituals.

    Per event, in this order: outcomes and click-through, a new time zone (anniversaries move),
    inactivity timers, cancellations of waiting decisions, the customer facts rituals read
    (first purchase, open complaint tickets, top tier), then triggers in the rules' order."""

    def __init__(self, r: RitualState, customer_id: str, ctx: Context) -> None:
        self.r = r
        self.customer_id = customer_id
        self.ctx = ctx
        self.out: list[Decision] = []
        self.outcomes: list[Outcome] = []
        self.use(ctx.rules)

    def use(self, rules: Rules) -> None:
        """Decide with these rules (the version in force at the item's instant)."""
        self.rules = rules
        self.program = self.ctx.program if rules is self.ctx.rules else rules.program

    # decisions ---------------------------------------------------------------------------------

    def decide(
        self,
        ritual: Compiled,
        anchor: str,
        due_at: int,
        at: int,
        facts: dict[str, Any],
        source: str,
        cancelled: str | None = None,
    ) -> None:
        """A ritual falls due at `at`: the guardrails (`GUARDRAILS`, in order) settle or defer
        it; a settled decision is recorded, with what it changes in the customer's state."""
        r, rules = self.r, self.rules
        name = ritual.name
        facts = dict(facts)
        due = Due(ritual, at, cancelled, r, self.customer_id, rules, self.ctx.wall_ms)
        answer = verdict(due)
        facts.update(answer.facts)
        if isinstance(answer, Defer):
            self._arm(Timer(answer.until, name, anchor, due_at, source, facts))
            return
        status, reason = answer.status, answer.reason
        customer_facing = due.customer_facing
        once_per = ritual.d.once_per
        if status == Status.DELIVERED and customer_facing:
            window = rules.guardrails.frequency_cap.window
            r.deliveries = [(t, m) for t, m in r.deliveries if at - t < window]
            r.deliveries.append((at, ritual.marketing))
        if once_per is not None and status in TAKEN:
            r.windows = {**r.windows, name: at}
        facts["source_event_id"] = source
        self._record(name, at, status)
        if status in TAKEN:
            arm = "treated" if status == Status.DELIVERED else "held_out"
            r.watch = [*r.watch, (at, name, arm, 0)]
            nid = nudge_id(name, self.customer_id, anchor)[:_NUDGE_DIGEST]
            r.clickable = [*r.clickable, (at, name, arm, nid)][-_MAX_CLICKABLE:]
            self.outcomes.append((name, arm, "decided", rules.version))
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

    def _record(self, ritual: str, at: int, status: Status) -> None:
        """The profile's per-ritual last decision and its recent deliveries."""
        r = self.r
        r.last = {**r.last, ritual: (at, status)}
        if status == Status.DELIVERED:
            r.delivered = [(t, name) for t, name in r.delivered if at - t < DELIVERED_WINDOW_MS] + [
                (at, ritual)
            ]

    def _cancelled_by_state(self, ritual: Compiled, facts: dict[str, Any]) -> str | None:
        """The first `cancel_if` the customer's state meets: its reason (the values join the
        explanation)."""
        if not ritual.cancel_if:
            return None
        state = _State(self.r)
        for rule, conds in ritual.cancel_if:
            if holds(conds, state):
                for name in rule.when:
                    facts[name] = state[name]
                return rule.reason
        return None

    def _arm(self, timer: Timer) -> None:
        self.r.timers.append(timer)

    def arm(self, ritual: Compiled, timer: Timer) -> None:
        """A timed decision, once per anchor."""
        if not ritual.d.enabled or _known(self.r, timer.ritual, timer.anchor):
            return
        _remember(self.r, timer.ritual, timer.anchor)
        self._arm(timer)

    # items -------------------------------------------------------------------------------------

    def fire(self, timer: Timer) -> None:
        ritual = self.program.by_name.get(timer.ritual)
        if ritual is None:  # a ritual the rules no longer define: its timers lapse
            return
        facts = dict(timer.facts)
        cancelled = None
        if timer.cancelled_by:
            facts["cancelled_by_event_id"] = timer.cancelled_by
            cancelled = facts.pop("cancel_reason", "cancelled")
        if not cancelled:
            cancelled = self._cancelled_by_state(ritual, facts)
        self.decide(ritual, timer.anchor, timer.due_at, timer.due, facts, timer.source, cancelled)
        if ritual.anniversary is not None:  # the next year's, once (anchors dedupe re-arming)
            self._arm_anniversary(ritual, timer.facts["year"] + 1, timer.source)

    def apply(self, ev: Pending) -> None:
        """An event's effect on rituals, at its instant in ritual time."""
        r = self.r
        if ev.kind == "consent":  # a preference, not activity: no outcome, no timer moves
            if ev.tz is not None and ev.tz != r.tz:
                r.tz = ev.tz
                self._rearm_anniversaries()
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
            self._rearm_anniversaries()
        program = self.program
        self._inactivity(ev, program)
        derived: dict[str, Any] = {}
        if ev.kind == "purchase":
            derived["first_purchase"] = r.first_purchase_at == 0
        elif ev.kind == "loyalty":
            new_top = ev.key == "tier_changed" and ev.status in TIERS
            new_top = new_top and TIERS.index(ev.status or "") > r.top_tier
            derived["new_top_tier"] = new_top
            derived["previous_top_tier"] = TIERS[r.top_tier] if r.top_tier >= 0 else None
        fields = _Fields(ev, r, derived)
        for ritual, cancel, conds in program.cancels.get(ev.kind, ()):
            if holds(conds, fields):
                self._cancel_waiting(ritual, cancel.match, cancel.reason, ev, fields)
        self._facts(ev, derived)
        triggers = program.triggers.get(ev.kind)
        if triggers:
            fired: set[str] = set()
            for ritual, trigger, conds in triggers:
                if ritual.name not in fired and holds(conds, fields):
                    fired.add(ritual.name)
                    self._triggered(ritual, trigger, ev, fields)
        if derived.get("first_purchase"):
            for ritual in program.anniversaries:
                self._arm_anniversary(ritual, 1, ev.event_id)

    def _facts(self, ev: Pending, derived: dict[str, Any]) -> None:
        """The customer facts rituals read, as of this event."""
        r = self.r
        if ev.kind == "purchase" and derived["first_purchase"]:
            r.first_purchase_at = ev.at
            r.first_purchase_day = _local(ev.at, r.tz).date().isoformat()
        elif ev.kind == "support_contact":
            ticket = ev.key or ""
            if ev.complaint and ev.status in {"opened", "reopened"}:
                if ticket not in r.open_tickets:
                    r.open_tickets = [*r.open_tickets, ticket][-_MAX_TICKETS:]
            elif ev.status == "resolved" and ticket in r.open_tickets:
                r.open_tickets = [t for t in r.open_tickets if t != ticket]
        elif ev.kind == "loyalty" and derived["new_top_tier"]:
            r.top_tier = TIERS.index(ev.status or "")

    def _triggered(self, ritual: Compiled, trigger: OnEvent, ev: Pending, fields: _Fields) -> None:
        """An event met a trigger: decide now, or wait."""
        r = self.r
        d = ritual.d
        if not d.enabled:
            return
        anchor = str(ritual.anchor(fields))
        facts = ritual.facts[id(trigger)](fields)
        wait = d.wait
        if wait is None:
            if _known(r, ritual.name, anchor):
                return
            _remember(r, ritual.name, anchor)
            cancelled = self._cancelled_by_state(ritual, facts)
            self.decide(ritual, anchor, ev.at, ev.at, facts, ev.event_id, cancelled)
            return
        if r.idle is not None:
            _materialize_ritual(r, ritual.name, self.ctx.rules)
        waiting = [
            t for t in r.timers
            if t.ritual == ritual.name and t.due_at > ev.at and not t.cancelled_by
        ]  # fmt: skip
        if waiting and d.while_waiting == "ignore":
            return
        if waiting and d.while_waiting == "restart":
            r.timers = [t for t in r.timers if not any(t is w for w in waiting)]
        due = wait_due(ev.at, for_ms=wait.for_, until=wait.until, tz=r.tz)
        self.arm(ritual, Timer(due, ritual.name, anchor, due, ev.event_id, facts))

    def _cancel_waiting(
        self, ritual: Compiled, match: list[str], reason: str, ev: Pending, fields: _Fields
    ) -> None:
        """Cancel the ritual's waiting decisions this event concerns (by `match`)."""
        if self.r.idle is not None:
            _materialize_ritual(self.r, ritual.name, self.ctx.rules)
        timers = self.r.timers
        for i, timer in enumerate(timers):
            if timer.ritual != ritual.name or timer.cancelled_by:
                continue
            if all((value := fields[m]) is None or timer.facts.get(m) == value for m in match):
                timers[i] = _cancelled(timer, ev.event_id, reason)

    def _inactivity(self, ev: Pending, program: Program) -> None:
        """Every activity moves the inactivity rituals' spells (`Idle`: built as timers only
        when due); one that fell due but waits out quiet hours is moot once the customer is
        back."""
        r = self.r
        inactivity = program.inactivity
        if not inactivity:
            if ev.at >= r.last_active:
                r.last_active = ev.at
            return
        names = program.inactivity_names
        at = ev.at
        timers = r.timers
        # One pass per timer: a due one of these rituals waiting out quiet hours is moot
        # (activity_resumed), in the order of `program.inactivity` (at most one matches).
        # Spells still in `idle` are all ahead of the clock: due ones are timers by now.
        if timers:
            for i, timer in enumerate(timers):
                if timer.ritual in names and timer.due_at <= at and not timer.cancelled_by:
                    timers[i] = _cancelled(timer, ev.event_id, "activity_resumed")
        if at < r.last_active:
            return
        r.last_active = at
        if timers:  # timers armed eagerly (a state written before `Idle`), or materialized
            r.timers = [t for t in timers if t.ritual not in names or t.due_at <= at]
        old = r.idle
        if old is not None:  # spells of rituals these rules do not restart stay pending
            for due, name in old.waiting:
                if name not in names:
                    r.timers.append(_materialize(old, due, name, self.ctx.rules))
        spells = program.spells
        r.idle = (
            Idle(at, ev.event_id, ev.kind, [(at + ms, name) for ms, name in spells])
            if spells else None
        )  # fmt: skip

    def _arm_anniversary(self, ritual: Compiled, year: int, source: str) -> None:
        r = self.r
        trigger = ritual.anniversary
        if r.first_purchase_day is None or trigger is None:
            return
        due = anniversary_due(r.first_purchase_day, year, r.tz, trigger.local_time)
        values = {"year": year, "first_purchase_day": r.first_purchase_day,
                  "source_event_id": source}  # fmt: skip
        facts = ritual.facts[id(trigger)](values)
        facts.setdefault("year", year)
        anchor = str(ritual.anchor(values))
        self.arm(ritual, Timer(due, ritual.name, anchor, due, source, facts))

    def _rearm_anniversaries(self) -> None:
        """A new time zone moves the pending anniversaries to their local time in that zone."""
        r = self.r
        if not r.first_purchase_day:
            return
        for i, t in enumerate(r.timers):
            ritual = self.program.by_name.get(t.ritual)
            if ritual is None or ritual.anniversary is None or "deferred_from" in t.facts:
                continue
            minutes = ritual.anniversary.local_time
            due = anniversary_due(r.first_purchase_day, t.facts["year"], r.tz, minutes)
            if due > r.at:
                r.timers[i] = msgspec.structs.replace(t, due=due, due_at=due)

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
                version = self.ctx.rules.at(at).version  # the rules the decision was made by
                for name, bit in OUTCOME_BITS.items():
                    if bits & bit and not seen & bit:
                        self.outcomes.append((ritual, arm, name, version))
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
                self.outcomes.append((ritual, arm, "clicked", self.ctx.rules.at(at).version))
                nid = None  # one decision per click
                continue
            kept.append(item)
        self.r.clickable = kept


def pending_of(event: EventBase, at: int) -> Pending:
    """The ritual-relevant part of an event."""
    p = Pending(at=at, kind=event.type, event_id=event.event_id, tz=event.tz)  # type: ignore[attr-defined]
    if isinstance(event, Click):
        p.key, p.action = event.nudge_id, event.action
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


def _timer_order(t: Timer, program: Program) -> tuple[int, int, int, str]:
    ritual = program.by_name.get(t.ritual)
    return (t.due, 0, ritual.rank if ritual is not None else len(program.rituals), t.anchor)


def _pending_order(p: Pending) -> tuple[int, int, int, str]:
    return (p.at, 1, TYPE_RANK[p.kind], p.event_id)


def next_due(r: RitualState) -> int | None:
    """The earliest instant this customer has something to process, if any."""
    times = [t.due for t in r.timers] + [p.at for p in r.pending]
    if r.idle is not None and r.idle.waiting:
        times.append(r.idle.waiting[0][0])
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
    dated = ctx.rules.effective_from is not None  # several versions: each item picks its own
    # Events due by the clock, in ritual order, sorted once (a replay can queue thousands for
    # one customer); processing never queues events, so only timers are looked at each turn.
    pending = s.pending
    if len(pending) == 1:  # the common case: the event just queued, nothing else
        events = pending if pending[0].at <= clock else []
    else:
        events = sorted((p for p in pending if p.at <= clock), key=_pending_order)
    if events:
        s.pending = [p for p in pending if p.at > clock]
    i = 0
    rules = ctx.rules
    while True:
        idle = s.idle
        if idle is not None and idle.waiting and idle.waiting[0][0] <= clock:
            _materialize_due(s, clock, rules)
        timers = [t for t in s.timers if t.due <= clock]
        first_event = events[i] if i < len(events) else None
        if not timers:
            if first_event is None:
                break
            first_timer = None
        else:
            program = run.program
            first_timer = (
                timers[0] if len(timers) == 1
                else min(timers, key=lambda t: _timer_order(t, program))
            )  # fmt: skip
        if first_timer is not None and (
            first_event is None or _timer_order(first_timer, program) < _pending_order(first_event)
        ):
            s.timers.remove(first_timer)
            s.at = max(s.at, first_timer.due)
            if dated:
                run.use(ctx.rules.at(first_timer.due))
            run.fire(first_timer)
        else:
            assert first_event is not None
            i += 1
            s.at = max(s.at, first_event.at)
            if dated:
                run.use(ctx.rules.at(first_event.at))
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


class RitualLogic:
    """The rules' rituals and guardrails as the engine's `CustomerLogic`: the generic
    data-driven evaluator (`_Run`). Stateless: the rules in force come with each call's
    `Context`, so one instance serves every partition and every rules version."""

    __slots__ = ()

    def on_event(
        self, state: RitualState, customer_id: str, event: EventBase, at: int, clock: int,
        ctx: Context,
    ) -> Step:  # fmt: skip
        """`on_event`: queue the event for ritual time, process what is due by `clock`."""
        return on_event(state, customer_id, event, at, clock, ctx)

    def on_due(self, state: RitualState, customer_id: str, clock: int, ctx: Context) -> Step:
        """`advance`: every timer and queued event due by `clock`, in ritual order."""
        return advance(state, customer_id, clock, ctx)

    def next_due(self, state: RitualState) -> int | None:
        """`next_due`: the earliest timer or queued event."""
        return next_due(state)


#: The logic every worker runs unless its configuration names another.
RITUAL_LOGIC = RitualLogic()
