"""A deterministic simulation of customers producing SPEC §1 events in simulated-time order.

Why it is built this way:

- **One heap of scheduled actions.** Each customer has a handful of recurring routines
  (browsing, shopping, newsletters, NPS invitations, support, referrals) plus the follow-ups
  of what they did (the next click of a session, the review of an order, the resolution of a
  ticket). Each is one heap entry, so memory is O(customers) and events come out in time order
  without sorting anything.
- **Seeded randomness only.** Event ids, order ids and every draw come from `random.Random`
  instances seeded from `seed`, never from the wall clock or `uuid4`, so a file run is
  reproducible byte for byte. Reactions to nudges use their own generator, so they do not
  disturb the base traffic more than the events they add.
- **Exact rates, realistic shape.** Routines are Poisson processes thinned by an hour-of-day
  profile in the customer's time zone, with the base rate scaled so the per-day rates of
  `personas.PERSONAS` hold exactly; only the timing within a day changes.
- **Silence is real.** A churner after the churn point, and a win-back during the gap, emit
  nothing at all: their pending actions are dropped (a generation counter invalidates them),
  except actions planned in reaction to a nudge, which are exactly how such customers return.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from bisect import bisect
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from stream.core.vocabulary import Status
from stream.tools.emitter.actions import Kind, Planned
from stream.tools.emitter.personas import (
    ACTIVITY_SIGMA,
    CES_AFTER_TICKET_INVITE,
    CSAT_AFTER_ORDER_INVITE,
    CSAT_AFTER_TICKET_INVITE,
    HOUR_PROFILE,
    NPS_INVITES_PER_DAY,
    PERSONAS,
    REDEEM_BLOCK,
    TIER_THRESHOLDS,
    ZONES,
    Persona,
    Zone,
)
from stream.tools.emitter.reactions import CustomerView, Nudge, react

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
#: Generation stamp of actions that run even while the customer is silent (nudge reactions).
FORCED = -1
_PROFILE_MEAN = sum(HOUR_PROFILE) / len(HOUR_PROFILE)
_TIERS = tuple(name for name, _ in TIER_THRESHOLDS)
_UUID_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)

_SEARCH_TERMS = (
    "running+shoes", "rain+jacket", "gift+ideas", "coffee+grinder", "desk+lamp", "backpack",
    "wireless+earbuds", "yoga+mat", "sale", "linen+shirt", "kids+books", "water+bottle",
)  # fmt: skip
_CATEGORIES = ("women", "men", "home", "kitchen", "outdoor", "kids", "beauty", "electronics")
_CAMPAIGNS = ("spring-edit", "new-arrivals", "weekend-deals", "bestsellers", "members-week")
_COMPLAINT_REASONS = (
    "Parcel arrived late", "Item damaged on arrival", "Wrong item delivered",
    "Refund not received", "Charged twice", "Missing item in parcel", "Poor product quality",
)  # fmt: skip
_QUESTION_REASONS = (
    "Question about sizing", "Change delivery address", "Invoice request", "Cannot log in",
    "Question about returns", "Product availability",
)  # fmt: skip
_REVIEW_TEXT = {
    1: ("Very disappointed, it broke after a week.", "Not as described. Would not buy again."),
    2: ("Quality is poor for the price.", "Arrived late and the fit is off."),
    3: ("It is fine, nothing special.", "Okay product, slow delivery."),
    4: ("Good quality, happy with it.", "Nice product, delivery took a while."),
    5: ("Excellent, exactly what I wanted!", "Great quality and fast delivery.", "Love it."),
}
# Consent (SPEC §1): most opt-outs come from a newsletter's unsubscribe link (about 0.4 % of
# opened newsletters, so roughly 0.2 % of those sent), some customers opt back in at the
# preference centre weeks later, and a few ask support to stop every message.
UNSUBSCRIBE_PER_OPEN = 0.004
OPT_BACK_IN = 0.15
ALL_OPT_OUT_PER_TICKET = 0.01
_CLICK_BODY = ("page_view", "link_click", "search", "share", "comment")
_SUPPORT_CHANNELS = ("email", "chat", "phone", "social", "in_store")
_SUPPORT_CUM = tuple(accumulate((0.35, 0.3, 0.2, 0.08, 0.07)))
_REVIEW_CHANNELS = ("site", "third_party", "social")
_REVIEW_CUM = tuple(accumulate((0.7, 0.2, 0.1)))


class Emitted(NamedTuple):
    """One event the simulation produced (the event dict is SPEC §1 JSON, ready to encode)."""

    at_ms: int
    type: str
    customer_id: str
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What makes a run: same config, same events."""

    customers: int
    days: float
    start: datetime
    seed: int | str = 0
    prefix: str = "cust"
    browse: float = 1.0  # scales browsing sessions: lighter traffic, same commerce and voice

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ValueError("customers must be >= 1")
        if self.days <= 0:
            raise ValueError("days must be > 0")
        if self.start.tzinfo is None:
            raise ValueError("start must carry a UTC offset")
        if self.browse <= 0:
            raise ValueError("browse must be > 0")
        if not self.prefix or len(self.prefix) > 100:
            raise ValueError("prefix must be 1..100 characters")


@dataclass(slots=True)
class Order:
    order_id: str
    review_planned: bool = False


@dataclass(slots=True)
class Ticket:
    ticket_id: str
    status: str
    complaint: bool
    order_id: str | None
    reopened: bool = False


@dataclass(slots=True)
class Customer:
    """One simulated customer: fixed traits, plus the bounded state its behaviour needs."""

    idx: int
    customer_id: str
    persona: Persona
    zone: Zone
    tzinfo: ZoneInfo
    activity: float  # heterogeneity multiplier on browsing and buying rates (mean 1)
    arrival_ms: int
    churn_ms: int | None = None  # churners: silent from here on (if within the run)
    gap_ms: tuple[int, int] | None = None  # win-backs: silent in [start, end)
    silent: bool = False
    gen: int = 0
    member: bool = False
    points: int = 0
    lifetime_points: int = 0
    tier_rank: int = -1
    orders: deque[Order] = field(default_factory=lambda: deque(maxlen=8))
    tickets: dict[str, Ticket] = field(default_factory=dict)
    seen_nudges: deque[str] = field(default_factory=lambda: deque(maxlen=32))
    unsubscribed: bool = False  # opted out (of marketing or all) and not back in

    def view(self) -> CustomerView:
        """A read-only snapshot for the pure reaction function."""
        return CustomerView(
            customer_id=self.customer_id,
            persona=self.persona,
            silent=self.silent,
            member=self.member,
            unreviewed_orders=tuple(o.order_id for o in self.orders if not o.review_planned),
            open_tickets=tuple(
                t.ticket_id for t in self.tickets.values() if t.status != "resolved"
            ),
        )


class _Tables:
    """Cumulative weights per persona, precomputed for fast `bisect` draws."""

    __slots__ = ("ces", "clicks", "csat", "nps", "ratings")

    def __init__(self, p: Persona) -> None:
        self.clicks = tuple(accumulate((0.5, 0.25, 0.15, p.share_weight, p.comment_weight)))
        self.ratings = tuple(accumulate(p.ratings))
        self.nps = tuple(accumulate(p.nps))
        self.csat = tuple(accumulate(p.csat))
        self.ces = tuple(accumulate(p.ces))


_day_cache: list[Any] = [None, ""]


def rfc3339_ms(ms: int) -> str:
    """`2026-03-02T12:00:00.123Z`: RFC 3339, UTC, millisecond precision.

    Runs once per event: the date part is cached (events come in time order), the rest is
    integer arithmetic.
    """
    day, rest = divmod(ms, DAY)
    if _day_cache[0] != day:
        tm = time.gmtime(day * 86400)
        _day_cache[0] = day
        _day_cache[1] = f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T"
    hour, rest = divmod(rest, HOUR)
    minute, rest = divmod(rest, MINUTE)
    secs, millis = divmod(rest, SECOND)
    return f"{_day_cache[1]}{hour:02d}:{minute:02d}:{secs:02d}.{millis:03d}Z"


def uuid_from_bits(bits: int) -> str:
    """A version-4-shaped UUID string from 128 seeded random bits (reproducible, unlike uuid4)."""
    bits = (bits & _UUID_MASK) | _UUID_SET
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime (exact, no float rounding)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * DAY + delta.seconds * SECOND + delta.microseconds // 1000


def allocate(n: int, shares: list[float]) -> list[int]:
    """Split `n` by `shares` with the largest-remainder method (counts sum to `n`)."""
    total = sum(shares)
    raw = [n * s / total for s in shares]
    counts = [int(r) for r in raw]
    order = sorted(range(len(shares)), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


class Simulation:
    """Customers and their scheduled actions; `step()` returns the next event in time order."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.start_ms = to_ms(config.start)
        self.end_ms = self.start_ms + int(config.days * DAY)
        self.now_ms = self.start_ms
        seed = config.seed
        self._rng = random.Random(f"engage-emit/{seed}/sim")
        self._react_rng = random.Random(f"engage-emit/{seed}/reactions")
        # Consent draws have a stream of their own: adding them left every other draw (and so
        # every run made before consent existed) unchanged.
        self._consent_rng = random.Random(f"engage-emit/{seed}/consent")
        self._heap: list[tuple[int, int, int, int, int, Any]] = []
        self._seq = itertools.count()
        self._tables = {p.name: _Tables(p) for p in PERSONAS}
        self._zones = {z.tz: ZoneInfo(z.tz) for z in ZONES}
        self._handlers: dict[int, Callable[[Customer, int, Any, bool], dict[str, Any] | None]]
        self._handlers = {
            Kind.ARRIVE: self._arrive,
            Kind.SESSION: self._session,
            Kind.SHOP: self._shop,
            Kind.NEWSLETTER: self._newsletter,
            Kind.NPS_INVITE: self._nps_invite,
            Kind.TICKET: self._ticket,
            Kind.REFERRAL: self._referral,
            Kind.CLICK: self._click,
            Kind.PURCHASE: self._purchase,
            Kind.REDEEM: self._redeem,
            Kind.EARN: self._earn,
            Kind.TIER: self._tier,
            Kind.REVIEW: self._review,
            Kind.SURVEY: self._survey,
            Kind.FOLLOW: self._follow,
            Kind.JOIN: self._join,
            Kind.CONVERT: self._convert,
            Kind.CHURN: self._churn,
            Kind.GAP: self._gap,
            Kind.RESUME: self._resume,
            Kind.VISIT: self._visit,
            Kind.PROMPTED: self._prompted,
            Kind.VISIT_SHOP: self._visit_shop,
            Kind.CONSENT: self._consent,
        }
        self.customers = self._populate()
        self.by_id = {c.customer_id: c for c in self.customers}

    # ----------------------------------------------------------------------------- public

    def step(self) -> Emitted | None:
        """Run scheduled actions up to the next event; None when the run is over."""
        heap, customers, handlers = self._heap, self.customers, self._handlers
        while heap:
            t, _, idx, kind, gen, data = heapq.heappop(heap)
            if t >= self.end_ms:
                heap.clear()
                return None
            c = customers[idx]
            forced = gen == FORCED
            if not forced and (gen != c.gen or c.silent):
                continue  # the customer fell silent (or came back) since this was planned
            self.now_ms = t
            event = handlers[kind](c, t, data, forced)
            if event is not None:
                return Emitted(t, event["type"], c.customer_id, event)
        return None

    def __iter__(self) -> Iterator[Emitted]:
        while (item := self.step()) is not None:
            yield item

    def peek_ms(self) -> int | None:
        """Simulated time of the next scheduled action (a lower bound of the next event)."""
        if not self._heap or self._heap[0][0] >= self.end_ms:
            return None
        return self._heap[0][0]

    def deliver(self, nudge: Nudge) -> list[Planned] | None:
        """Hand a delivered nudge to its customer; returns what the customer will do.

        None when the nudge is ignored: unknown customers (another run's, another emitter's),
        repeated `nudge_id`s (SPEC §4 allows a re-send after a crash), and anything not
        `delivered`. An empty list: received, but the customer did not react.
        """
        c = self.by_id.get(nudge.customer_id)
        if c is None or nudge.status != Status.DELIVERED or nudge.nudge_id in c.seen_nudges:
            return None
        c.seen_nudges.append(nudge.nudge_id)
        plan = react(c.view(), nudge, self._react_rng, self.now_ms)
        for step in plan:
            self._push(c, max(step.at_ms, self.now_ms), step.kind, step.data or None, True)
        return plan

    # ------------------------------------------------------------------------- population

    def _populate(self) -> list[Customer]:
        rng, cfg = self._rng, self.config
        counts = allocate(cfg.customers, [p.share for p in PERSONAS])
        personas = [p for p, n in zip(PERSONAS, counts, strict=True) for _ in range(n)]
        rng.shuffle(personas)
        zone_cum = list(accumulate(z.weight for z in ZONES))
        customers = []
        for idx, persona in enumerate(personas):
            zone = ZONES[min(bisect(zone_cum, rng.random() * zone_cum[-1]), len(ZONES) - 1)]
            sigma = ACTIVITY_SIGMA
            c = Customer(
                idx=idx,
                customer_id=f"{cfg.prefix}-{idx + 1:06d}",
                persona=persona,
                zone=zone,
                tzinfo=self._zones[zone.tz],
                activity=rng.lognormvariate(-sigma * sigma / 2, sigma),
                arrival_ms=self.start_ms,
            )
            if persona.arrives_within is not None:
                lo, hi = persona.arrives_within
                c.arrival_ms = self.start_ms + int(rng.uniform(lo, hi) * cfg.days * DAY)
            if persona.churn_after_days is not None:
                c.churn_ms = c.arrival_ms + int(rng.uniform(*persona.churn_after_days) * DAY)
            if persona.gap_start_days is not None and persona.gap_days is not None:
                begin = c.arrival_ms + int(rng.uniform(*persona.gap_start_days) * DAY)
                c.gap_ms = (begin, begin + int(rng.uniform(*persona.gap_days) * DAY))
            customers.append(c)
            self._push(c, c.arrival_ms, Kind.ARRIVE, None)
        return customers

    # ---------------------------------------------------------------------------- helpers

    def _push(
        self, c: Customer, t: int, kind: Kind, data: Any = None, forced: bool = False
    ) -> None:
        if t < self.end_ms:
            heapq.heappush(
                self._heap, (t, next(self._seq), c.idx, kind, FORCED if forced else c.gen, data)
            )

    def _hour(self, c: Customer, t: int) -> int:
        return datetime.fromtimestamp(t // 1000, c.tzinfo).hour

    def _next(self, c: Customer, t: int, rate_per_day: float) -> int | None:
        """Next instant of a Poisson process of `rate_per_day`, shaped by the local hour."""
        if rate_per_day <= 0:
            return None
        rng = self._rng
        mean_gap = DAY * _PROFILE_MEAN / rate_per_day
        while True:
            t += int(rng.expovariate(1.0) * mean_gap) + 1
            if t >= self.end_ms or rng.random() < HOUR_PROFILE[self._hour(c, t)]:
                return t

    def _recur(self, c: Customer, t: int, kind: Kind, rate_per_day: float) -> None:
        nxt = self._next(c, t, rate_per_day)
        if nxt is not None:
            self._push(c, nxt, kind)

    def _awake(self, c: Customer, t: int) -> int:
        """Move a follow-up out of the customer's night (people review over breakfast)."""
        rng = self._rng
        for _ in range(48):
            if t >= self.end_ms or rng.random() < HOUR_PROFILE[self._hour(c, t)]:
                break
            t += rng.randrange(15 * MINUTE, 90 * MINUTE)
        return t

    def _later(self, c: Customer, t: int, lo_days: float, hi_days: float) -> int:
        return self._awake(c, t + int(self._rng.uniform(lo_days, hi_days) * DAY))

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{self._rng.getrandbits(64):016x}"

    def _base(self, c: Customer, t: int, kind: str) -> dict[str, Any]:
        return {
            "event_id": uuid_from_bits(self._rng.getrandbits(128)),
            "customer_id": c.customer_id,
            "type": kind,
            "occurred_at": rfc3339_ms(t),
            "tz": c.zone.tz,
            "schema_version": 1,
        }

    def _pick(self, cum: tuple[float, ...]) -> int:
        return min(bisect(cum, self._rng.random() * cum[-1]), len(cum) - 1)

    def _geometric(self, mean: float) -> int:
        """1, 2, 3, ... with the given mean (>= 1)."""
        if mean <= 1:
            return 1
        q = 1 - 1 / mean
        n, rng = 1, self._rng
        while rng.random() < q:
            n += 1
        return n

    def _dwell(self) -> int:
        # Log-normal, median ~25 s; exp(gauss) is the same law, cheaper than lognormvariate.
        return min(int(math.exp(10.1 + self._rng.gauss())), 30 * MINUTE)

    # -------------------------------------------------------------------------- routines

    def _start_routines(self, c: Customer, t: int) -> None:
        p, a = c.persona, c.activity
        self._recur(c, t, Kind.SESSION, p.sessions_per_day * a * self.config.browse)
        self._recur(c, t, Kind.SHOP, p.purchases_per_day * a)
        self._recur(c, t, Kind.NEWSLETTER, p.newsletters_per_day)
        self._recur(c, t, Kind.NPS_INVITE, NPS_INVITES_PER_DAY)
        self._recur(c, t, Kind.TICKET, p.tickets_per_day)
        if c.member:
            self._recur(c, t, Kind.REFERRAL, p.referrals_per_day)

    def _arrive(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any] | None:
        p, rng = c.persona, self._rng
        newcomer = p.arrives_within is not None
        # A newcomer is first seen now: the first visit is their first event ever. Customers
        # who exist at the start just carry on with their routines.
        first_visit = self._open_session(c, t, None, False) if newcomer else None
        self._start_routines(c, t)
        if rng.random() < p.loyalty_join:
            mean_days = 5.0 if newcomer else 20.0
            self._push(c, self._awake(c, t + int(rng.expovariate(1 / mean_days) * DAY)), Kind.JOIN)
        if c.churn_ms is not None:
            self._push(c, c.churn_ms, Kind.CHURN)
        if c.gap_ms is not None:
            self._push(c, c.gap_ms[0], Kind.GAP)
        return first_visit

    def _session(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any]:
        self._recur(
            c, t, Kind.SESSION, c.persona.sessions_per_day * c.activity * self.config.browse
        )
        return self._open_session(c, t, None, forced)

    def _visit(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any]:
        return self._open_session(c, t, None, forced)

    def _shop(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any]:
        self._recur(c, t, Kind.SHOP, c.persona.purchases_per_day * c.activity)
        return self._open_session(c, t, "purchase", forced)

    def _visit_shop(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any]:
        return self._open_session(c, t, "purchase", forced)

    def _open_session(self, c: Customer, t: int, then: str | None, forced: bool) -> dict[str, Any]:
        n = self._geometric(c.persona.clicks_per_session) + (1 if then else 0)
        first = "search" if self._rng.random() < 0.3 else "page_view"
        return self._start_session(c, t, n, then, forced, first)

    def _start_session(
        self,
        c: Customer,
        t: int,
        clicks: int,
        then: str | None,
        forced: bool,
        first: str = "page_view",
    ) -> dict[str, Any]:
        """A session of `clicks` clicks; returns the first one, schedules the others."""
        return self._click(c, t, (self._id("s"), clicks, then, first), forced)

    def _click(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any]:
        session_id, remaining, then, action = data
        rng = self._rng
        if action is None:
            action = _CLICK_BODY[self._pick(self._tables[c.persona.name].clicks)]
        ev = self._base(c, t, "click")
        ev["action"] = action
        ev["url"] = self._url(action)
        ev["session_id"] = session_id
        dwell = self._dwell()
        ev["dwell_ms"] = dwell
        nxt = t + dwell + 300 + int(rng.random() * 3700)  # hot path: cheaper than randrange
        if remaining > 1:
            self._push(c, nxt, Kind.CLICK, (session_id, remaining - 1, then, None), forced)
        elif then == "purchase":
            if c.member and c.points >= REDEEM_BLOCK and rng.random() < c.persona.redeem_rate:
                self._push(c, nxt, Kind.REDEEM, None, forced)
                nxt += rng.randrange(5 * SECOND, 60 * SECOND)
            self._push(c, nxt, Kind.PURCHASE, None, forced)
        return ev

    def _url(self, action: str) -> str:
        rng = self._rng
        sku = 10000 + int(rng.random() * 89999)  # hot path: cheaper than randrange
        if action == "search":
            return f"https://shop.example/search?q={rng.choice(_SEARCH_TERMS)}"
        if action == "link_click":
            return f"https://shop.example/c/{rng.choice(_CATEGORIES)}"
        if action == "share":
            return f"https://shop.example/p/{sku}#share"
        if action == "comment":
            return f"https://community.example/t/{sku // 10}#reply"
        if action == "email_click":
            return f"https://shop.example/campaign/{rng.choice(_CAMPAIGNS)}"
        return f"https://shop.example/p/{sku}"

    def _newsletter(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any] | None:
        p, rng = c.persona, self._rng
        self._recur(c, t, Kind.NEWSLETTER, p.newsletters_per_day)
        if rng.random() >= p.newsletter_open:
            return None
        t_open = self._awake(c, t)
        # The unsubscribe link, a minute after opening. (The newsletter itself is the shop's
        # business, not engage's: it keeps arriving in the simulation, so the draws of every
        # other behaviour stay exactly those of a run without consent traffic.)
        if not c.unsubscribed and self._consent_rng.random() < UNSUBSCRIBE_PER_OPEN:
            data = {"scope": "marketing", "status": "opted_out", "source": "unsubscribe_link"}
            self._push(c, t_open + MINUTE, Kind.CONSENT, data)
        if t_open != t:  # opened later in the day: do it then
            self._push(c, t_open, Kind.PROMPTED, {"action": "email_open"})
            return None
        return self._prompted(c, t, {"action": "email_open"}, forced)

    def _prompted(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any]:
        """An email open/click: from a nudge when data has a nudge_id, else a newsletter."""
        rng = self._rng
        action: str = data["action"]
        nudge_id = data.get("nudge_id")
        ev = self._base(c, t, "click")
        ev["action"] = action
        if action == "email_click":
            ev["url"] = self._url(action)
        if nudge_id is not None:
            ev["nudge_id"] = nudge_id
        elif action == "email_open" and rng.random() < c.persona.newsletter_click:
            # A newsletter click-through: email_click, then browsing from the landing page.
            nxt = t + rng.randrange(10 * SECOND, 10 * MINUTE)
            self._push(c, nxt, Kind.PROMPTED, {"action": "email_click"}, forced)
        elif action == "email_click":  # browsing on from the newsletter's landing page
            landing = (self._id("s"), self._geometric(c.persona.clicks_per_session), None,
                       "page_view")  # fmt: skip
            self._push(c, t + rng.randrange(2 * SECOND, 20 * SECOND), Kind.CLICK, landing, forced)
        return ev

    # -------------------------------------------------------------------------- purchases

    def _purchase(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any]:
        p, z, rng = c.persona, c.zone, self._rng
        items = self._geometric(p.items_per_order)
        scale = 10**z.decimals
        total = 0
        for _ in range(items):
            eur = rng.lognormvariate(0, 0.6) * p.order_value_eur / p.items_per_order / 1.197
            minor = max(int(eur * z.per_eur * scale), scale)
            if z.decimals:
                minor = (minor // scale) * scale + rng.choice((99, 90, 50, 0)) * scale // 100
            else:
                minor = max(minor // 10 * 10, 10)
            total += minor
        amount = f"{total // scale}.{total % scale:0{z.decimals}d}" if z.decimals else str(total)
        order_id = self._id("ord")
        ev = self._base(c, t, "purchase")
        ev["order_id"] = order_id
        ev["amount"] = amount
        ev["currency"] = z.currency
        ev["items"] = items
        order = Order(order_id)
        c.orders.append(order)
        if c.member:
            points = max(int(total / scale / z.per_eur), 1)
            self._push(c, t + rng.randrange(SECOND, 2 * MINUTE), Kind.EARN, points)
        if rng.random() < p.review_rate:
            order.review_planned = True
            self._push(c, self._later(c, t, 3, 14), Kind.REVIEW, {"order_id": order_id})
        if rng.random() < CSAT_AFTER_ORDER_INVITE and rng.random() < p.survey_response:
            when = self._later(c, t, 1, 4)
            self._push(c, when, Kind.SURVEY, {"survey": "csat", "order_id": order_id})
        if rng.random() < p.order_issue_rate:
            self._push(c, self._later(c, t, 1, 10), Kind.TICKET, {"order_id": order_id})
        return ev

    def _redeem(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any] | None:
        if not c.member or c.points < REDEEM_BLOCK:
            return None
        blocks = self._rng.randint(1, c.points // REDEEM_BLOCK)
        points = blocks * REDEEM_BLOCK
        c.points -= points
        ev = self._base(c, t, "loyalty")
        ev["action"] = "points_redeemed"
        ev["points"] = points
        return ev

    def _earn(self, c: Customer, t: int, points: int, forced: bool) -> dict[str, Any]:
        c.points += points
        c.lifetime_points += points
        rank = max(i for i, (_, need) in enumerate(TIER_THRESHOLDS) if c.lifetime_points >= need)
        if rank > c.tier_rank:
            c.tier_rank = rank
            self._push(c, t + self._rng.randrange(SECOND, 10 * SECOND), Kind.TIER, rank)
        ev = self._base(c, t, "loyalty")
        ev["action"] = "points_earned"
        ev["points"] = points
        return ev

    def _tier(self, c: Customer, t: int, rank: int, forced: bool) -> dict[str, Any]:
        ev = self._base(c, t, "loyalty")
        ev["action"] = "tier_changed"
        ev["tier"] = _TIERS[rank]
        return ev

    def _review(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any] | None:
        order_id = data["order_id"]
        order = next((o for o in c.orders if o.order_id == order_id), None)
        # A nudge reaction reviews only an order with no review done or planned meanwhile.
        if forced and (order is None or order.review_planned):
            return None
        if order is not None:
            order.review_planned = True
        rng = self._rng
        rating = self._pick(self._tables[c.persona.name].ratings) + 1
        ev = self._base(c, t, "review")
        ev["review_id"] = self._id("rev")
        ev["order_id"] = order_id
        ev["rating"] = rating
        ev["channel"] = _REVIEW_CHANNELS[self._pick(_REVIEW_CUM)]
        if rng.random() < 0.6:
            ev["text"] = rng.choice(_REVIEW_TEXT[rating])
        return ev

    # ---------------------------------------------------------------------------- surveys

    def _nps_invite(self, c: Customer, t: int, data: Any, forced: bool) -> None:
        self._recur(c, t, Kind.NPS_INVITE, NPS_INVITES_PER_DAY)
        if self._rng.random() < c.persona.survey_response:
            self._push(c, self._later(c, t, 0, 2), Kind.SURVEY, {"survey": "nps"})

    def _survey(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any]:
        kind: str = data["survey"]
        tables = self._tables[c.persona.name]
        if kind == "nps":
            score = self._pick(tables.nps)
        elif kind == "csat":
            score = min(self._pick(tables.csat) + 1 + data.get("bias", 0), 5)
        else:
            score = min(self._pick(tables.ces) + 1 + data.get("bias", 0), 7)
        ev = self._base(c, t, "survey")
        ev["survey"] = kind
        ev["score"] = score
        if "order_id" in data:
            ev["order_id"] = data["order_id"]
        if "ticket_id" in data:
            ev["ticket_id"] = data["ticket_id"]
        return ev

    # ---------------------------------------------------------------------------- support

    def _ticket(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any]:
        p, rng = c.persona, self._rng
        if data is None:
            self._recur(c, t, Kind.TICKET, p.tickets_per_day)
        order_id = data["order_id"] if data else None
        complaint = rng.random() < p.complaint_rate
        ticket_id = self._id("tkt")
        ev = self._support(c, t, ticket_id, "opened", complaint, order_id)
        ev["reason"] = rng.choice(_COMPLAINT_REASONS if complaint else _QUESTION_REASONS)
        if self._consent_rng.random() < ALL_OPT_OUT_PER_TICKET:  # "stop contacting me"
            data = {"scope": "all", "status": "opted_out", "source": "support"}
            self._push(c, t + 5 * MINUTE, Kind.CONSENT, data)
        if rng.random() < p.first_contact_resolution:
            ev["status"] = "resolved"
            self._after_ticket(c, t, ticket_id, 0)
        else:
            c.tickets[ticket_id] = Ticket(ticket_id, "opened", complaint, order_id)
            wait = int(rng.lognormvariate(0, 0.8) * 1.5 * DAY)  # median 1.5 days
            self._push(c, self._awake(c, t + wait), Kind.FOLLOW, (ticket_id, "resolve", False))
        return ev

    def _support(
        self, c: Customer, t: int, ticket_id: str, status: str, complaint: bool, order: str | None
    ) -> dict[str, Any]:
        ev = self._base(c, t, "support_contact")
        ev["contact_id"] = self._id("ctc")
        ev["ticket_id"] = ticket_id
        ev["channel"] = _SUPPORT_CHANNELS[self._pick(_SUPPORT_CUM)]
        ev["status"] = status
        ev["complaint"] = complaint
        if order is not None:
            ev["order_id"] = order
        return ev

    def _follow(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any] | None:
        """A later contact on an open ticket: the resolution, or a reopening."""
        if isinstance(data, dict):  # planned by a service_recovery reaction
            data = (data["ticket_id"], data["op"], bool(data.get("recovered")))
        ticket_id, op, recovered = data
        ticket = c.tickets.get(ticket_id)
        if ticket is None:
            return None
        rng = self._rng
        if op == "resolve":
            if ticket.status == "resolved":
                return None  # already resolved (a recovery got there first)
            ev = self._support(c, t, ticket_id, "resolved", ticket.complaint, ticket.order_id)
            ticket.status = "resolved"
            if not recovered and not ticket.reopened and rng.random() < c.persona.reopen_rate:
                ticket.reopened = True
                self._push(c, self._later(c, t, 1, 7), Kind.FOLLOW, (ticket_id, "reopen", False))
            else:
                del c.tickets[ticket_id]
                self._after_ticket(c, t, ticket_id, 1 if recovered else 0)
            return ev
        if ticket.status != "resolved":
            return None
        ticket.status = "reopened"
        wait = self._later(c, t, 0.5, 4)
        self._push(c, wait, Kind.FOLLOW, (ticket_id, "resolve", False))
        return self._support(c, t, ticket_id, "reopened", ticket.complaint, ticket.order_id)

    def _after_ticket(self, c: Customer, t: int, ticket_id: str, bias: int) -> None:
        """Transactional surveys once a ticket is closed (better scores after a recovery)."""
        rng, respond = self._rng, c.persona.survey_response
        if rng.random() < CSAT_AFTER_TICKET_INVITE and rng.random() < respond:
            data = {"survey": "csat", "ticket_id": ticket_id, "bias": bias}
            self._push(c, self._later(c, t, 0.05, 2), Kind.SURVEY, data)
        if rng.random() < CES_AFTER_TICKET_INVITE and rng.random() < respond:
            data = {"survey": "ces", "ticket_id": ticket_id, "bias": bias}
            self._push(c, self._later(c, t, 0.05, 2), Kind.SURVEY, data)

    # ---------------------------------------------------------------------------- consent

    def _consent(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any]:
        """A preference change (not activity); an unsubscriber may opt back in weeks later."""
        opted_out = data["status"] == "opted_out"
        c.unsubscribed = opted_out
        rng = self._consent_rng
        if opted_out and rng.random() < OPT_BACK_IN:
            days = rng.uniform(7, 60) if data["scope"] == "marketing" else rng.uniform(14, 90)
            back = {"scope": data["scope"], "status": "opted_in", "source": "preference_center"}
            self._push(c, t + int(days * DAY), Kind.CONSENT, back)
        ev = {  # like _base, but ids from the consent stream (the main draws stay untouched)
            "event_id": uuid_from_bits(rng.getrandbits(128)),
            "customer_id": c.customer_id,
            "type": "consent",
            "occurred_at": rfc3339_ms(t),
            "tz": c.zone.tz,
            "schema_version": 1,
        }
        ev["scope"] = data["scope"]
        ev["status"] = data["status"]
        ev["source"] = data["source"]
        return ev

    # ---------------------------------------------------------------------------- loyalty

    def _join(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any] | None:
        if c.member:
            return None
        c.member = True
        c.tier_rank = 0
        self._recur(c, t, Kind.REFERRAL, c.persona.referrals_per_day)
        ev = self._base(c, t, "loyalty")
        ev["action"] = "joined"
        ev["tier"] = _TIERS[0]
        return ev

    def _referral(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any] | None:
        p, rng = c.persona, self._rng
        if data is None:
            self._recur(c, t, Kind.REFERRAL, p.referrals_per_day)
        if not c.member:
            return None
        if rng.random() < p.referral_conversion:
            self._push(c, self._later(c, t, 2, 21), Kind.CONVERT)
        ev = self._base(c, t, "loyalty")
        ev["action"] = "referral_sent"
        return ev

    def _convert(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any]:
        ev = self._base(c, t, "loyalty")
        ev["action"] = "referral_converted"
        return ev

    # -------------------------------------------------------------------------- lifecycle

    def _churn(self, c: Customer, t: int, data: Any, forced: bool) -> None:
        c.silent = True
        c.gen += 1

    def _gap(self, c: Customer, t: int, data: Any, forced: bool) -> None:
        c.silent = True
        c.gen += 1
        assert c.gap_ms is not None
        self._push(c, c.gap_ms[1], Kind.RESUME, {"visit": True}, forced=True)

    def _resume(self, c: Customer, t: int, data: Any, forced: bool) -> dict[str, Any] | None:
        if not c.silent:
            return None  # already back (a nudge reaction came first)
        c.silent = False
        self._start_routines(c, t)
        if data and data.get("visit"):
            return self._open_session(c, t, None, False)  # the return itself
        return None
