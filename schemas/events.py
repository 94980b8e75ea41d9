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
from importlib.resources import files
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
    model_validator,
)

#: Zone names of the pinned `tzdata` package: what the JSON Schemas allow for `tz`. The worker
#: accepts any zone its tz database knows (`is_known_zone`), and `zoneinfo` falls back to this
#: package, so every name listed here is accepted: schema-valid never means dead-lettered.
IANA_ZONES: tuple[str, ...] = tuple(
    sorted(files("tzdata").joinpath("zones").read_text(encoding="utf-8").split())
)
#: RFC 3339 with an offset, years 1900..2999, at most microseconds: a subset of what the worker
#: parses, so it never overflows when normalised to UTC. Validators should also assert
#: `format: date-time` (it rejects impossible dates such as February 30).
RFC3339_PATTERN = (
    r"^(19|2[0-9])[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
#: A decimal string: no sign, no exponent, at most 14 integer digits and 4 decimals (the
#: worker's `max_digits=18, decimal_places=4`).
DECIMAL_PATTERN = r"^(0|[1-9][0-9]{0,13})(\.[0-9]{1,4})?$"
Id = Annotated[str, Field(min_length=1, max_length=128)]
Amount = Annotated[
    Decimal,
    WithJsonSchema(
        {"type": "string", "pattern": DECIMAL_PATTERN, "examples": ["49.90", "1200", "0.5"]}
    ),
]
Zone = Annotated[
    str | None,
    WithJsonSchema({"anyOf": [{"type": "string", "enum": list(IANA_ZONES)}, {"type": "null"}]}),
]
Timestamp = Annotated[
    AwareDatetime,
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}),
]
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
#: The largest integer every JSON implementation holds exactly (2**53 - 1): the upper bound of
#: integer fields, so a huge number is a schema violation instead of an overflow downstream.
MAX_SAFE_INT = 2**53 - 1
#: Points in one loyalty event: balances are sums of these and must stay within 64 bits.
MAX_POINTS = 10**9
#: Event time may not precede the Unix epoch: earlier is a broken producer clock (e.g. a zero
#: timestamp), and an instant must be representable in UTC whatever its offset.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


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
    occurred_at: Timestamp = Field(
        description="Event time, RFC 3339 with an offset; normalised to UTC."
    )
    tz: Zone = Field(
        default=None,
        max_length=64,
        description="The customer's IANA time zone, e.g. Europe/Berlin; the latest one wins.",
    )
    schema_version: int = Field(default=1, ge=1, le=MAX_SAFE_INT)

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        try:
            utc = value.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00: no such instant in UTC
            raise ValueError("occurred_at is out of range once normalised to UTC") from None
        if utc < EARLIEST:
            raise ValueError("occurred_at is before 1970-01-01T00:00:00Z")
        return utc

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None and not is_known_zone(value):
            raise ValueError("unknown IANA time zone")
        return value


def _example(kind: str, n: int, **fields: Any) -> dict[str, Any]:
    """One documented, valid event (published in the JSON Schemas' `examples`)."""
    base = {
        "event_id": f"ex-{kind}-{n}",
        "customer_id": fields.pop("customer_id", "cust-000042"),
        "type": kind,
        "occurred_at": fields.pop("occurred_at", "2026-03-02T10:15:00+01:00"),
    }
    return base | fields


def _schema_extra(*examples: dict[str, Any], all_of: list[dict[str, Any]] | None = None) -> Any:
    """json_schema_extra of an event model: its examples and the cross-field rules the
    worker checks (so a schema-valid payload is never a schema_violation)."""

    def extra(schema: dict[str, Any]) -> None:
        schema["examples"] = list(examples)
        if all_of:
            schema["allOf"] = all_of

    return extra


class Click(EventBase):
    model_config = ConfigDict(
        json_schema_extra=_schema_extra(
            _example("click", 1, action="page_view", url="https://shop.example/p/1",
                     session_id="s-1", tz="Europe/Berlin"),
            _example("click", 2, action="email_click", nudge_id="5" * 64, dwell_ms=1200),
        )
    )  # fmt: skip

    type: Literal["click"]
    action: Literal[
        "page_view", "link_click", "share", "comment", "email_open", "email_click", "search"
    ]
    url: OptionalText
    session_id: Id | None = None
    nudge_id: Id | None = Field(
        default=None, description="Set when the click came from a nudge (a prompted interaction)."
    )
    dwell_ms: int | None = Field(default=None, ge=0, le=MAX_SAFE_INT)


class Purchase(EventBase):
    model_config = ConfigDict(
        json_schema_extra=_schema_extra(
            _example("purchase", 1, order_id="ord-1001", amount="49.90", currency="EUR",
                     items=2),
            _example("purchase", 2, customer_id="cust-000043", order_id="ord-1002",
                     amount="1200", currency="JPY", items=1, tz="Asia/Tokyo",
                     occurred_at="2026-03-03T09:00:00Z"),
        )
    )  # fmt: skip

    type: Literal["purchase"]
    order_id: Id
    amount: Amount = Field(
        ge=0,
        max_digits=18,
        decimal_places=4,
        description='A decimal string such as "49.90" (JSON numbers are accepted too, but '
        "binary floats may not round-trip: send strings).",
    )
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code.")
    items: int = Field(ge=1, le=MAX_SAFE_INT)


class Review(EventBase):
    model_config = ConfigDict(
        json_schema_extra=_schema_extra(
            _example("review", 1, review_id="rev-1", order_id="ord-1001", rating=5,
                     channel="site", text="Great fit."),
        )
    )  # fmt: skip

    type: Literal["review"]
    review_id: Id
    order_id: Id | None = None
    rating: int = Field(ge=1, le=5)
    channel: Literal["site", "third_party", "social"]
    text: OptionalText


class SupportContact(EventBase):
    model_config = ConfigDict(
        json_schema_extra=_schema_extra(
            _example("support_contact", 1, contact_id="ct-1", ticket_id="tk-1", channel="chat",
                     status="opened", complaint=True, order_id="ord-1001",
                     reason="Parcel arrived damaged."),
            _example("support_contact", 2, contact_id="ct-2", ticket_id="tk-1", channel="chat",
                     status="resolved", complaint=True, occurred_at="2026-03-02T11:00:00+01:00"),
        )
    )  # fmt: skip

    type: Literal["support_contact"]
    contact_id: Id
    ticket_id: Id
    channel: Literal["email", "chat", "phone", "social", "in_store"]
    status: Literal["opened", "resolved", "reopened"]
    complaint: bool
    order_id: Id | None = None
    reason: OptionalText


class Survey(EventBase):
    model_config = ConfigDict(
        json_schema_extra=_schema_extra(
            _example("survey", 1, survey="nps", score=9),
            _example("survey", 2, survey="csat", score=4, ticket_id="tk-1"),
            _example("survey", 3, survey="ces", score=6, order_id="ord-1001"),
            all_of=[
                {
                    "if": {"properties": {"survey": {"const": kind}}, "required": ["survey"]},
                    "then": {"properties": {"score": {"minimum": low, "maximum": high}}},
                }
                for kind, (low, high) in SURVEY_RANGES.items()
            ],
        )
    )

    type: Literal["survey"]
    survey: Literal["nps", "csat", "ces"] = Field(
        description="nps scores 0..10, csat 1..5, ces 1..7 (higher = easier)."
    )
    score: int = Field(json_schema_extra={"minimum": 0, "maximum": 10})
    order_id: Id | None = None
    ticket_id: Id | None = None

    @model_validator(mode="after")
    def _score_in_range(self) -> Survey:
        low, high = SURVEY_RANGES[self.survey]
        if not low <= self.score <= high:
            raise ValueError(f"{self.survey} score must be within {low}..{high}")
        return self


class Loyalty(EventBase):
    model_config = ConfigDict(
        json_schema_extra=_schema_extra(
            _example("loyalty", 1, action="joined"),
            _example("loyalty", 2, action="points_earned", points=120),
            _example("loyalty", 3, action="tier_changed", tier="silver"),
            all_of=[
                {
                    "if": {
                        "properties": {"action": {"const": "tier_changed"}},
                        "required": ["action"],
                    },
                    "then": {
                        "required": ["tier"],
                        "properties": {"tier": {"type": "string", "enum": list(TIERS)}},
                    },
                }
            ],
        )
    )

    type: Literal["loyalty"]
    action: Literal[
        "joined",
        "points_earned",
        "points_redeemed",
        "tier_changed",
        "referral_sent",
        "referral_converted",
    ]
    points: int | None = Field(default=None, ge=0, le=MAX_POINTS)
    tier: Literal["bronze", "silver", "gold", "platinum"] | None = None

    @model_validator(mode="after")
    def _tier_change_names_tier(self) -> Loyalty:
        if self.action == "tier_changed" and self.tier is None:
            raise ValueError("tier_changed needs a tier")
        return self


class Consent(EventBase):
    """A preference, not activity: `all` sets every scope, `marketing` only marketing."""

    model_config = ConfigDict(
        json_schema_extra=_schema_extra(
            _example("consent", 1, scope="marketing", status="opted_out",
                     source="unsubscribe_link"),
            _example("consent", 2, scope="all", status="opted_in", source="preference_center",
                     tz="America/New_York"),
        )
    )  # fmt: skip

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
