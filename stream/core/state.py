"""Per-customer state, its stored format, and the pure fold of one event into it (SPEC §3).

`fold(state, event, rules)` is the whole state transition: no I/O, no wall clock. What depends
on the partition clock (score, sentiment, quadrant, stage, windows) is stored as the few inputs
it needs and derived at read time by `stream.core.profile.view`, so the state stays small (bounded
lists only) and a fold costs O(1) whatever the customer's history.

Times are integers: milliseconds since the Unix epoch, UTC. Exact integer arithmetic keeps
replays byte-identical across machines.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from decimal import Decimal

import msgspec

from schemas.events import (
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
from stream.core.consent import Choice, apply_consent
from stream.core.rituals import RitualState
from stream.core.rules import DEFAULT_RULES, ProfileRules
from stream.core.state_formats import DECODER_V1

#: The layout version of an encoded `CustomerState`, written as the first key of every value
#: (`{"v":3,...}`). Bump it, and freeze the previous layout in `stream.core.state_formats`
#: with a reader in `_READERS`, whenever a change would make older bytes decode differently:
#: a field inserted, removed or reordered in an array-like struct (timers, queued events,
#: tickets, money, consent, outbox), a field renamed or moved. Format 1 (release 0.1.0) wrote
#: no version key. Format 2 had no `r.idle`: its inactivity rituals were timers, which format 3
#: still reads. Format 3 was bumped for a field added, not changed: a release that knows only
#: format 2 would read a format 3 state without its pending inactivity spells and lose them,
#: so it must refuse it instead.
FORMAT_VERSION = 3
#: Why a stored state could not be read (`engage_unreadable_states_total{reason}`).
UNREADABLE_REASONS = ("newer_format", "malformed")

MS_PER_DAY = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ID_DIGEST = 8


def to_ms(moment: datetime) -> int:
    """Exact epoch milliseconds of an aware datetime (no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)


class Ticket(msgspec.Struct, array_like=True):
    """One support ticket, as much as the complaint counters need."""

    id: str
    status: str
    at: int
    contacts: int
    complaint: bool
    fcr: bool


class Money(msgspec.Struct, array_like=True):
    orders: int
    revenue: str  # Decimal as text: exact, and JSON has no decimal type


class Sent(msgspec.Struct, array_like=True):
    """A decision recorded in the state until its send is acknowledged (the outbox)."""

    nudge_id: str
    delivered: bool  # also goes to the nudges topic
    record: msgspec.Raw  # the canonical decision bytes, embedded verbatim


class CustomerState(
    msgspec.Struct, omit_defaults=True, kw_only=True, tag_field="v", tag=FORMAT_VERSION
):
    """What the table holds per customer. Field names are the serialised keys; the encoded
    value starts with its format version (`v`, see `FORMAT_VERSION`)."""

    customer_id: str
    first_seen: int = 0
    last_seen: int = 0
    tz: str | None = None
    tz_at: int = 0
    counts: dict[str, int] = {}
    clicks: dict[str, int] = {}
    active_days: list[int] = []  # distinct UTC epoch days with activity, recent window only
    reactivated_at: int = 0
    orders: int = 0
    money: dict[str, Money] = {}  # by currency
    currency: str | None = None  # the customer's own: that of the earliest purchase
    first_purchase_at: int = 0
    last_purchase_at: int = 0
    nps_last: int | None = None
    nps_at: int = 0
    csat_last: int | None = None
    csat_at: int = 0
    ces_last: int | None = None
    ces_at: int = 0
    reviews: int = 0
    rating_sum: int = 0
    tickets: list[Ticket] = []
    open_complaints: int = 0
    complaints_total: int = 0
    complaints_resolved: int = 0
    first_contact_resolutions: int = 0
    loyalty_member: bool = False
    tier: str | None = None
    tier_at: int = 0
    top_tier_rank: int = -1
    points: int = 0
    referrals_sent: int = 0
    referrals_converted: int = 0
    prompted_interactions: int = 0
    unprompted_interactions: int = 0
    eng_acc: float = 0.0  # decayed activity, valued at eng_at
    eng_at: int = 0
    signals: list[tuple[int, int]] = []  # (time, -1|0|+1) sentiment signals, recent only
    recent_ids: bytes = b""  # 8-byte digests of the latest event ids, oldest first
    consent: dict[str, Choice] = {}  # scope (marketing, all) -> latest choice, by event time
    r: RitualState = msgspec.field(default_factory=RitualState)  # rituals, in ritual time
    partition: int = -1  # the input partition it lives on: rebuilds the due index
    # Input topic suffix -> the highest offset folded from it (on `partition`): a re-read
    # message at or below it was folded already, whatever the consumer's commit lag.
    offsets: dict[str, int] = {}
    outbox: list[Sent] = []  # decisions taken whose sends are not acknowledged yet


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(CustomerState)
_CURRENT = b'{"v":%d,' % FORMAT_VERSION  # how every value this release writes starts
_FORMAT_1 = b'{"customer_id":'  # how every value release 0.1.0 wrote starts


class UnsupportedStateFormat(ValueError):
    """A stored state in a format this release does not know: written by a newer release (a
    rollback, or a newer worker in the same group). It is refused, never read as if it were
    the current layout: the customer keeps the stored bytes untouched for the release that
    wrote them."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"customer state format {version} is not one this release reads "
            f"(1 to {FORMAT_VERSION}): written by a newer release"
        )
        self.version = version


class _Version(msgspec.Struct):
    v: int = 1


_VERSION = msgspec.json.Decoder(_Version)


def encode(state: CustomerState) -> bytes:
    """The stored bytes of a state, in the current format (`FORMAT_VERSION`)."""
    return _ENCODER.encode(state)


def format_version(raw: bytes) -> int:
    """The format an encoded state was written in: every value written by this release or by
    0.1.0 is recognised by its first bytes; anything else is read for its `v` key (1 when it
    has none). Raises `msgspec.DecodeError` on a value that is not a JSON object."""
    if raw.startswith(_CURRENT):
        return FORMAT_VERSION
    if raw.startswith(_FORMAT_1):
        return 1
    return _VERSION.decode(raw).v


def _read_v1(raw: bytes) -> CustomerState:
    """Format 1 decoded with its own frozen layout, then upgraded by field name: a field
    format 1 did not have takes its default, one the current layout dropped is left behind.
    A field renamed or moved since needs its value carried over here, explicitly."""
    old = DECODER_V1.decode(raw)
    state = msgspec.convert(old, CustomerState, from_attributes=True)
    if old.r.referral_at:  # format 1 kept the invite's once-per instant in its own field
        state.r.windows = {"referral_invite": old.r.referral_at}
    return state


_FORMAT_2 = b'{"v":2,'


def _read_v2(raw: bytes) -> CustomerState:
    """Format 2 is format 3 without `r.idle` (an optional key): read as format 3 under its
    own version key. Its inactivity timers stay explicit timers, which rituals still handle."""
    if raw.startswith(_FORMAT_2):
        return _DECODER.decode(_CURRENT + raw[len(_FORMAT_2) :])
    value = msgspec.json.decode(raw)  # the key elsewhere than first: not as format 2 was written
    value["v"] = FORMAT_VERSION
    return _DECODER.decode(_ENCODER.encode(value))


#: format version -> how to read it into the current `CustomerState`
_READERS = {FORMAT_VERSION: _DECODER.decode, 2: _read_v2, 1: _read_v1}


def decode(raw: bytes) -> CustomerState:
    """A stored state read into the current layout, whichever known format it was written
    in. Raises `UnsupportedStateFormat` for a format from a newer release and
    `msgspec.DecodeError` for bytes that are no state at all."""
    if raw.startswith(_CURRENT):
        return _DECODER.decode(raw)
    version = format_version(raw)
    reader = _READERS.get(version)
    if reader is None:
        raise UnsupportedStateFormat(version)
    return reader(raw)


class _At(msgspec.Struct, array_like=True, gc=False):
    """A timer or queued event of `RitualState`, as far as its first field (`due`, `at`)."""

    at: int


class _IdleDue(msgspec.Struct, array_like=True, gc=False):
    """`rituals.Idle`, as far as its waiting spells' due instants."""

    at: int
    event_id: str
    kind: str
    waiting: list[_At] = []


class _DueItems(msgspec.Struct, gc=False):
    timers: list[_At] = []
    idle: _IdleDue | None = None
    pending: list[_At] = []


class Peek(msgspec.Struct, kw_only=True, gc=False):
    """What rebuilding a partition's due index needs of a stored state, decoded without the
    rest: whose it is, where it lives, its ritual items' instants, whether its outbox holds
    decisions to re-send, and the activity fields that say when its segments change by
    themselves (`serving.projection.next_segment_change` reads them as it reads a state)."""

    customer_id: str
    partition: int = -1
    r: _DueItems = msgspec.field(default_factory=_DueItems)
    outbox: list[msgspec.Raw] = []
    first_seen: int = 0
    last_seen: int = 0
    reactivated_at: int = 0
    eng_acc: float = 0.0
    eng_at: int = 0
    signals: list[tuple[int, int]] = []

    @property
    def due(self) -> int | None:
        """The earliest instant of a timer, inactivity spell or queued event (`rituals.next_due`
        of the state)."""
        r = self.r
        times = [t.at for t in r.timers] + [e.at for e in r.pending]
        if r.idle is not None and r.idle.waiting:
            times.append(r.idle.waiting[0].at)
        return min(times) if times else None


_PEEK = msgspec.json.Decoder(Peek)


def _known_format(raw: bytes) -> None:
    """Raise `UnsupportedStateFormat` for a value of a format this release cannot read (the
    partial decoders below read the same fields in every known format)."""
    if not raw.startswith(_CURRENT):
        version = format_version(raw)
        if version not in _READERS:
            raise UnsupportedStateFormat(version)


def peek(raw: bytes) -> Peek:
    """A `Peek` of an encoded state. A restart registers every stored customer in the due
    index: this decoder skips every field it is not asked for (a third of `decode`'s time)
    and keeps a few small values per customer instead of a whole state. Raises like
    `decode` on an unreadable value or an unknown format. The fields it reads have the same
    place in every known format; a format that moves one needs a peek of its own here."""
    _known_format(raw)
    return _PEEK.decode(raw)


class Segments(msgspec.Struct, kw_only=True, gc=False):
    """What the segment gauges count of a stored state (`telemetry.kpis.add_to_snapshot`:
    activity windows, retention, CLV, lifecycle stage, engagement and sentiment), decoded
    without the rest. The worker counts every stored customer every `ENGAGE_KPI_INTERVAL_S`;
    decoding whole states made that read hold the stream (26 µs a customer in the latency
    benchmark, against 1.7 µs for these fields)."""

    first_seen: int = 0
    last_seen: int = 0
    reactivated_at: int = 0
    money: dict[str, Money] = {}
    currency: str | None = None
    first_purchase_at: int = 0
    eng_acc: float = 0.0
    eng_at: int = 0
    signals: list[tuple[int, int]] = []


_SEGMENTS = msgspec.json.Decoder(Segments)


def segments(raw: bytes) -> Segments:
    """The `Segments` of an encoded state. Raises like `decode` on an unreadable value or an
    unknown format. Its fields have the same names and layout in every known format (format
    1 included); a format that changes one needs its own reading here."""
    _known_format(raw)
    return _SEGMENTS.decode(raw)


def new_state(customer_id: str) -> CustomerState:
    return CustomerState(customer_id=customer_id)


_DIGESTS: dict[str, bytes] = {}  # recent event ids' digests (the duplicate check, then the fold)


def event_digest(event_id: str) -> bytes:
    """The digest an event id is remembered by in `recent_ids` (computed once per event: the
    duplicate check and the fold both ask)."""
    digest = _DIGESTS.get(event_id)
    if digest is None:
        if len(_DIGESTS) >= 4096:
            _DIGESTS.clear()
        digest = _DIGESTS[event_id] = hashlib.blake2b(
            event_id.encode("utf-8"), digest_size=_ID_DIGEST
        ).digest()
    return digest


def is_duplicate(state: CustomerState, event_id: str) -> bool:
    """True when `event_id` is among the customer's recent events (SPEC §1)."""
    digest = event_digest(event_id)
    ids = state.recent_ids
    at = ids.find(digest)
    while at != -1:  # a match must start on a digest boundary
        if at % _ID_DIGEST == 0:
            return True
        at = ids.find(digest, at + 1)
    return False


def fold(
    state: CustomerState, event: EventBase, rules: ProfileRules = DEFAULT_RULES
) -> CustomerState:
    """Fold one accepted, non-duplicate event into the state; returns the new state.

    The input state is not modified, so a failure half-way cannot leave a torn table value:
    each container is copied by the step that changes it (most events change few of them).
    """
    s = msgspec.structs.replace(state, counts=dict(state.counts))
    t = to_ms(event.occurred_at)
    kind: str = event.type  # type: ignore[attr-defined]
    _remember_id(s, event.event_id, rules.dedup_window)
    if isinstance(event, Consent):  # a preference, not activity: no recency, score or timer
        s.counts[kind] = s.counts.get(kind, 0) + 1
        if event.tz is not None and t >= s.tz_at:
            s.tz, s.tz_at = event.tz, t
        s.consent = apply_consent(
            s.consent,
            scope=event.scope,
            status=event.status,
            at=t,
            event_id=event.event_id,
            source=event.source,
        )
        return s
    _activity(s, t, rules)
    if event.tz is not None and t >= s.tz_at:
        s.tz, s.tz_at = event.tz, t
    s.counts[kind] = s.counts.get(kind, 0) + 1
    _engagement(s, t, rules.weight(event), rules.half_life_days)
    if isinstance(event, Click):
        _click(s, event)
    elif isinstance(event, Purchase):
        _purchase(s, event, t)
    elif isinstance(event, Review):
        s.reviews += 1
        s.rating_sum += event.rating
        _signal(s, t, _polarity(event.rating, good=4, neutral=3), rules)
    elif isinstance(event, SupportContact):
        _support(s, event, t, rules)
    elif isinstance(event, Survey):
        _survey(s, event, t, rules)
    elif isinstance(event, Loyalty):
        _loyalty(s, event, t)
    return s


def _remember_id(s: CustomerState, event_id: str, window: int) -> None:
    ids = s.recent_ids + event_digest(event_id)
    s.recent_ids = ids[-window * _ID_DIGEST :]


def _activity(s: CustomerState, t: int, rules: ProfileRules) -> None:
    if s.first_seen == 0 or t < s.first_seen:
        s.first_seen = t
    if s.last_seen and t - s.last_seen > rules.reactivation_gap_days * MS_PER_DAY:
        s.reactivated_at = t
    s.last_seen = max(s.last_seen, t)
    day = t // MS_PER_DAY
    horizon = s.last_seen // MS_PER_DAY - rules.active_window_days
    days = s.active_days
    if day > horizon and day not in days:
        days = sorted([*days, day])
    s.active_days = [d for d in days if d > horizon]


def _engagement(s: CustomerState, t: int, weight: float, half_life_days: float) -> None:
    """Decayed accumulator: A(at) = sum w * 0.5^((at - t_i) / half-life), kept at eng_at."""
    half_life_ms = half_life_days * MS_PER_DAY
    if s.eng_at == 0 or t >= s.eng_at:
        if s.eng_at:
            s.eng_acc *= math.pow(0.5, (t - s.eng_at) / half_life_ms)
        s.eng_acc += weight
        s.eng_at = t
    else:  # a late event: its weight, decayed to the accumulator's reference time
        s.eng_acc += weight * math.pow(0.5, (s.eng_at - t) / half_life_ms)


def _polarity(score: int, *, good: int, neutral: int) -> int:
    return 1 if score >= good else 0 if score >= neutral else -1


def _signal(s: CustomerState, t: int, value: int, rules: ProfileRules) -> None:
    signals = sorted([*s.signals, (t, value)])
    newest = signals[-1][0]
    horizon = newest - rules.sentiment_window_days * MS_PER_DAY
    s.signals = [sig for sig in signals if sig[0] > horizon][-rules.max_signals :]


def _click(s: CustomerState, event: Click) -> None:
    s.clicks = {**s.clicks, event.action: s.clicks.get(event.action, 0) + 1}
    if event.nudge_id is not None:
        s.prompted_interactions += 1
    else:
        s.unprompted_interactions += 1


def _purchase(s: CustomerState, event: Purchase, t: int) -> None:
    s.orders += 1
    s.money = dict(s.money)
    held = s.money.get(event.currency)
    if held is None:
        s.money[event.currency] = Money(1, str(event.amount))
    else:
        s.money[event.currency] = Money(held.orders + 1, str(Decimal(held.revenue) + event.amount))
    if s.first_purchase_at == 0 or t < s.first_purchase_at:
        s.first_purchase_at = t
        s.currency = event.currency
    s.last_purchase_at = max(s.last_purchase_at, t)


def _survey(s: CustomerState, event: Survey, t: int, rules: ProfileRules) -> None:
    if event.survey == "nps":
        if t >= s.nps_at:
            s.nps_last, s.nps_at = event.score, t
        _signal(s, t, _polarity(event.score, good=9, neutral=7), rules)
    elif event.survey == "csat":
        if t >= s.csat_at:
            s.csat_last, s.csat_at = event.score, t
        _signal(s, t, _polarity(event.score, good=4, neutral=3), rules)
    elif t >= s.ces_at:
        s.ces_last, s.ces_at = event.score, t


def _is_open(ticket: Ticket) -> bool:
    return ticket.complaint and ticket.status != "resolved"


def _is_resolved(ticket: Ticket) -> bool:
    return ticket.complaint and ticket.status == "resolved"


def _support(s: CustomerState, event: SupportContact, t: int, rules: ProfileRules) -> None:
    """Complaint counters follow each ticket's latest status (by event time).

    A first-contact resolution is a complaint ticket whose first contact resolved it; any
    further contact on that ticket withdraws it.
    """
    if event.complaint and event.status == "opened":
        _signal(s, t, -1, rules)
    s.tickets = [msgspec.structs.replace(tk) for tk in s.tickets]
    ticket = next((tk for tk in s.tickets if tk.id == event.ticket_id), None)
    if ticket is None:
        ticket = Ticket(event.ticket_id, event.status, t, 1, event.complaint, False)
        if event.complaint:
            s.complaints_total += 1
            if event.status == "resolved":
                ticket.fcr = True
                s.first_contact_resolutions += 1
        s.open_complaints += _is_open(ticket)
        s.complaints_resolved += _is_resolved(ticket)
        s.tickets.append(ticket)
        _evict_tickets(s, rules.max_tickets)
        return
    was_open, was_resolved = _is_open(ticket), _is_resolved(ticket)
    if ticket.fcr:
        ticket.fcr = False
        s.first_contact_resolutions -= 1
    ticket.contacts += 1
    if event.complaint and not ticket.complaint:
        ticket.complaint = True
        s.complaints_total += 1
    if t >= ticket.at:
        ticket.status, ticket.at = event.status, t
    s.open_complaints += _is_open(ticket) - was_open
    s.complaints_resolved += _is_resolved(ticket) - was_resolved


def _evict_tickets(s: CustomerState, limit: int) -> None:
    """Keep the state bounded: forget the oldest closed tickets first, then the oldest."""
    while len(s.tickets) > limit:
        closed = [tk for tk in s.tickets if tk.status == "resolved"]
        victim = min(closed or s.tickets, key=lambda tk: tk.at)
        s.tickets.remove(victim)
        # A forgotten open complaint can no longer be resolved by us: stop counting it open.
        s.open_complaints -= _is_open(victim)


def _loyalty(s: CustomerState, event: Loyalty, t: int) -> None:
    s.loyalty_member = True
    if event.action == "points_earned":
        s.points += event.points or 0
    elif event.action == "points_redeemed":
        s.points -= event.points or 0
    elif event.action == "tier_changed" and event.tier is not None:
        if t >= s.tier_at:
            s.tier, s.tier_at = event.tier, t
        s.top_tier_rank = max(s.top_tier_rank, TIERS.index(event.tier))
    elif event.action == "referral_sent":
        s.referrals_sent += 1
    elif event.action == "referral_converted":
        s.referrals_converted += 1
