"""Input event models (SPEC §1).

These pydantic v2 models are the one definition of what an acceptable event is: the worker
validates raw message bytes against them, and `python -m schemas.export` turns them into the
JSON Schemas in `schemas/json/` that emitters in any language can validate against before
producing. Unknown extra fields are ignored, so producers can add fields ahead of a schema bump.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

Id = Annotated[str, Field(min_length=1, max_length=128)]
OptionalText = Annotated[str | None, Field(default=None, max_length=4096)]

CLICK_ACTIONS = (
    "page_view",
    "link_click",
    "share",
    "comment",
    "email_open",
    "email_click",
    "search",
)
TIERS = ("bronze", "silver", "gold", "platinum")
#: Event types in the order of the SPEC §1 table: this order breaks ties between events due at
#: the same instant (SPEC §2), so it is part of the contract, not a style choice.
EVENT_TYPES = ("click", "purchase", "review", "support_contact", "survey", "loyalty", "consent")
#: Every type except `consent` is customer activity (SPEC §1): a consent event is a preference
#: and changes no recency, score or inactivity timer.
ACTIVITY_TYPES = EVENT_TYPES[:-1]
CONSENT_SCOPES = ("marketing", "all")
CONSENT_STATUSES = ("opted_in", "opted_out")
CONSENT_SOURCES = ("preference_center", "unsubscribe_link", "support", "import")
SURVEY_RANGES = {"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}


@lru_cache(maxsize=1024)
def is_known_zone(name: str) -> bool:
    """True when `name` is an IANA zone this machine's tz database knows (cached: hot path)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


class EventBase(BaseModel):
    """Fields common to every event."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: Id = Field(description="Unique per event; a producer retry repeats it.")
    customer_id: Id = Field(description="Must equal the Kafka message key.")
    occurred_at: AwareDatetime = Field(
        description="Event time, RFC 3339 with an offset; normalised to UTC."
    )
    tz: str | None = Field(
        default=None,
        max_length=64,
        description="The customer's IANA time zone, e.g. Europe/Berlin; the latest one wins.",
    )
    schema_version: int = Field(default=1, ge=1)

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None and not is_known_zone(value):
            raise ValueError("unknown IANA time zone")
        return value


class Click(EventBase):
    type: Literal["click"]
    action: Literal[
        "page_view", "link_click", "share", "comment", "email_open", "email_click", "search"
    ]
    url: OptionalText
    session_id: Id | None = None
    nudge_id: Id | None = Field(
        default=None, description="Set when the click came from a nudge (a prompted interaction)."
    )
    dwell_ms: int | None = Field(default=None, ge=0)


class Purchase(EventBase):
    type: Literal["purchase"]
    order_id: Id
    amount: Decimal = Field(ge=0, max_digits=18, decimal_places=4)
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code.")
    items: int = Field(ge=1)


class Review(EventBase):
    type: Literal["review"]
    review_id: Id
    order_id: Id | None = None
    rating: int = Field(ge=1, le=5)
    channel: Literal["site", "third_party", "social"]
    text: OptionalText


class SupportContact(EventBase):
    type: Literal["support_contact"]
    contact_id: Id
    ticket_id: Id
    channel: Literal["email", "chat", "phone", "social", "in_store"]
    status: Literal["opened", "resolved", "reopened"]
    complaint: bool
    order_id: Id | None = None
    reason: OptionalText


class Survey(EventBase):
    type: Literal["survey"]
    survey: Literal["nps", "csat", "ces"] = Field(
        description="nps scores 0..10, csat 1..5, ces 1..7 (higher = easier)."
    )
    score: int
    order_id: Id | None = None
    ticket_id: Id | None = None

    @model_validator(mode="after")
    def _score_in_range(self) -> Survey:
        low, high = SURVEY_RANGES[self.survey]
        if not low <= self.score <= high:
            raise ValueError(f"{self.survey} score must be within {low}..{high}")
        return self


class Loyalty(EventBase):
    type: Literal["loyalty"]
    action: Literal[
        "joined",
        "points_earned",
        "points_redeemed",
        "tier_changed",
        "referral_sent",
        "referral_converted",
    ]
    points: int | None = Field(default=None, ge=0)
    tier: Literal["bronze", "silver", "gold", "platinum"] | None = None

    @model_validator(mode="after")
    def _tier_change_names_tier(self) -> Loyalty:
        if self.action == "tier_changed" and self.tier is None:
            raise ValueError("tier_changed needs a tier")
        return self


class Consent(EventBase):
    """A preference, not activity: `all` sets every scope, `marketing` only marketing."""

    type: Literal["consent"]
    scope: Literal["marketing", "all"]
    status: Literal["opted_in", "opted_out"]
    source: Literal["preference_center", "unsubscribe_link", "support", "import"] | None = None


Event = Annotated[
    Click | Purchase | Review | SupportContact | Survey | Loyalty | Consent,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
MODELS: dict[str, type[EventBase]] = {
    "click": Click,
    "purchase": Purchase,
    "review": Review,
    "support_contact": SupportContact,
    "survey": Survey,
    "loyalty": Loyalty,
    "consent": Consent,
}
#: Default topic suffix per type (SPEC §1): the full name is f"{namespace}.{suffix}".
TOPIC_SUFFIX = {
    "click": "clicks",
    "purchase": "purchases",
    "review": "reviews",
    "support_contact": "support",
    "survey": "surveys",
    "loyalty": "loyalty",
    "consent": "consent",
}
