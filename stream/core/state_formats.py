"""Frozen layouts of older stored-state formats, each exactly as its release wrote it.

A stored customer state outlives the release that wrote it: the table (and its changelog) keeps
it until the customer's next change. `stream.core.state` writes the current format and reads
every format listed here by decoding it with its own frozen layout, then upgrading it to the
current `CustomerState` field by field, by name (`state.decode`). A layout here never changes:
it is what a past release put on disk.

Format 1 (release 0.1.0): no version key. Its array-like structs (timers, queued events,
tickets, money, consent choices, outbox entries) are positional, which is why a layout change
that inserts, removes or reorders one of their fields needs a new format and these copies.
"""

from __future__ import annotations

from typing import Any

import msgspec

# --- format 1 -------------------------------------------------------------------------------


class ChoiceV1(msgspec.Struct, array_like=True):
    status: str
    at: int
    event_id: str
    source: str | None = None


class TicketV1(msgspec.Struct, array_like=True):
    id: str
    status: str
    at: int
    contacts: int
    complaint: bool
    fcr: bool


class MoneyV1(msgspec.Struct, array_like=True):
    orders: int
    revenue: str


class SentV1(msgspec.Struct, array_like=True):
    nudge_id: str
    delivered: bool
    record: msgspec.Raw


class TimerV1(msgspec.Struct, array_like=True):
    due: int
    ritual: str
    anchor: str
    due_at: int
    source: str
    facts: dict[str, Any] = {}
    cancelled_by: str | None = None


class PendingV1(msgspec.Struct, array_like=True):
    at: int
    kind: str
    event_id: str
    key: str | None = None
    score: int | None = None
    status: str | None = None
    complaint: bool = False
    tz: str | None = None


class RitualStateV1(msgspec.Struct, omit_defaults=True):
    at: int = 0
    last_active: int = 0
    timers: list[TimerV1] = []
    pending: list[PendingV1] = []
    anchors: bytes = b""
    first_purchase_at: int = 0
    first_purchase_day: str | None = None
    top_tier: int = -1
    open_tickets: list[str] = []
    deliveries: list[tuple[int, bool]] = []
    referral_at: int = 0
    watch: list[tuple[int, str, str, int]] = []
    clickable: list[tuple[int, str, str, str]] = []
    tz: str | None = None
    last: dict[str, tuple[int, str]] = {}
    delivered: list[tuple[int, str]] = []
    consent: dict[str, ChoiceV1] = {}


class CustomerStateV1(msgspec.Struct, omit_defaults=True, kw_only=True):
    customer_id: str
    first_seen: int = 0
    last_seen: int = 0
    tz: str | None = None
    tz_at: int = 0
    counts: dict[str, int] = {}
    clicks: dict[str, int] = {}
    active_days: list[int] = []
    reactivated_at: int = 0
    orders: int = 0
    money: dict[str, MoneyV1] = {}
    currency: str | None = None
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
    tickets: list[TicketV1] = []
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
    eng_acc: float = 0.0
    eng_at: int = 0
    signals: list[tuple[int, int]] = []
    recent_ids: bytes = b""
    consent: dict[str, ChoiceV1] = {}
    r: RitualStateV1 = msgspec.field(default_factory=RitualStateV1)
    partition: int = -1
    offsets: dict[str, int] = {}
    outbox: list[SentV1] = []


DECODER_V1 = msgspec.json.Decoder(CustomerStateV1)
