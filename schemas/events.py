"""Input event models (SPEC §1).

These pydantic v2 models are the one definition of what an acceptable event is: the worker
validates raw message bytes against them, and `python -m schemas.export` turns them into the
JSON Schemas in `schemas/json/` that emitters in any language can validate against before
producing. Unknown extra fields are ignored, so producers can add fields ahead of a schema bump.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from importlib.resources import files
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.iso4217 import CURRENCIES

#: Zone names of the pinned `tzdata` package: the only values `tz` takes, in the worker and in
#: the JSON Schemas alike. A packaged list, not a lookup on this machine's tz database, which
#: also answers for files that are no zones (`localtime`, `posixrules`) and fails on
#: directories (`Europe`). `zoneinfo` falls back to this package, so every name loads.
IANA_ZONES: tuple[str, ...] = tuple(
    sorted(files("tzdata").joinpath("zones").read_text(encoding="utf-8").split())
)
_ZONES = frozenset(IANA_ZONES)
_CURRENCIES = frozenset(CURRENCIES)
#: The end of the text in a published pattern. Not `$`: Python's `re` (and so Python JSON
#: Schema validators) lets `$` match before a final newline, which the worker refuses.
_END = r"(?![\s\S])"
#: RFC 3339 with an offset, years 1970..2999, at most microseconds: what the worker parses
#: (it never overflows when normalised to UTC). Validators should also assert
#: `format: date-time` (it rejects impossible dates such as February 30).
RFC3339_PATTERN = (
    r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])" + _END
)
#: A decimal string: no sign, no exponent, no spaces or underscores, at most 14 integer digits
#: and 4 decimals (the worker's `max_digits=18, decimal_places=4`).
DECIMAL_PATTERN = r"^(0|[1-9][0-9]{0,13})(\.[0-9]{1,4})?" + _END
#: Characters no id may hold, as code point ranges: Unicode's control (Cc), format (Cf: zero
#: width spaces and joiners, bidi overrides such as U+202E, the byte order mark) and line and
#: paragraph separators (Zl, Zp). An id ends up in logs, headers, Redis keys and nudges, where
#: such characters forge lines or hide and reorder text. Fixed here (Unicode 14), so the worker
#: and the published pattern never differ with the Python version.
ID_FORBIDDEN: tuple[tuple[int, int], ...] = (
    (0x0000, 0x001F), (0x007F, 0x009F), (0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C),
    (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E),
    (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F), (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x13438),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F),
)  # fmt: skip
#: Unicode space separators (Zs): an id made of nothing else is blank.
ID_SPACES: tuple[tuple[int, int], ...] = (
    (0x0020, 0x0020), (0x00A0, 0x00A0), (0x1680, 0x1680), (0x2000, 0x200A), (0x202F, 0x202F),
    (0x205F, 0x205F), (0x3000, 0x3000),
)  # fmt: skip


def _char_class(ranges: tuple[tuple[int, int], ...]) -> str:
    """A regex character class of code point ranges that reads the same in Python's `re` and
    in ECMAScript with the `u` flag (the JSON Schema dialect): `\\uXXXX` escapes in the basic
    plane, the characters themselves beyond it (the dialects escape those differently)."""

    def char(cp: int) -> str:
        return f"\\u{cp:04X}" if cp <= 0xFFFF else chr(cp)

    return "[" + "".join(char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in ranges) + "]"


_FORBIDDEN = _char_class(ID_FORBIDDEN)
_SPACES = _char_class(ID_SPACES)
#: The published rule for ids: no forbidden character anywhere, and one that is no space.
ID_PATTERN = rf"^(?![\s\S]*{_FORBIDDEN})[\s\S]*[^{_SPACES[1:-1]}]"
_HAS_FORBIDDEN = re.compile(_FORBIDDEN).search
_BLANK = re.compile(_SPACES + "*").fullmatch
_RFC3339 = re.compile(RFC3339_PATTERN).fullmatch
_DECIMAL = re.compile(DECIMAL_PATTERN).fullmatch


def _check_id(value: str) -> str:
    """The id rule (`ID_PATTERN`). Every id is checked, several per event: an ASCII one, the
    common case, is checked with two string methods instead of two regular expressions (in
    ASCII the forbidden characters are exactly the non-printable ones, and the one space is
    U+0020)."""
    if value.isascii():
        forbidden, blank = not value.isprintable(), not value.strip(" ")
    else:
        forbidden, blank = _HAS_FORBIDDEN(value) is not None, _BLANK(value) is not None
    if forbidden:
        raise PydanticCustomError(
            "id_characters", "must not contain control, format or line-break characters"
        )
    if blank:
        raise PydanticCustomError("id_blank", "must not be blank (only spaces)")
    return value


def _decimal_string(value: Any) -> Any:
    """Amounts are decimal strings: a JSON number may already have lost the exact value in the
    producer, and Python's Decimal also reads exponents, spaces and underscores."""
    if not isinstance(value, str):
        raise PydanticCustomError("decimal_string", 'must be a decimal string such as "49.90"')
    if not _DECIMAL(value):
        raise PydanticCustomError(
            "decimal_string",
            "must be digits with an optional point and at most 4 decimals "
            "(no sign, exponent, spaces or underscores)",
        )
    return value


def _json_integer(value: Any) -> Any:
    """An integer field takes a JSON number with an integer value (`2`, or `2.0`, which JSON
    Schema counts as an integer too), never a string or a boolean."""
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


def _rfc3339(value: Any) -> Any:
    """Event time is an RFC 3339 string with an offset; pydantic alone would also take epoch
    numbers, a space for the `T`, a lower-case `z` and more."""
    if not isinstance(value, str) or not _RFC3339(value):
        raise PydanticCustomError(
            "rfc3339", "must be an RFC 3339 timestamp with an offset, years 1970..2999"
        )
    return value


def _known_currency(value: str) -> str:
    if value not in _CURRENCIES:
        raise PydanticCustomError("currency", "not an ISO 4217 currency code")
    return value


Id = Annotated[
    str,
    Field(min_length=1, max_length=128),
    AfterValidator(_check_id),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 128, "pattern": ID_PATTERN}),
]
Amount = Annotated[
    Decimal,
    BeforeValidator(_decimal_string),
    WithJsonSchema(
        {"type": "string", "pattern": DECIMAL_PATTERN, "examples": ["49.90", "1200", "0.5"]}
    ),
]
Currency = Annotated[
    str,
    AfterValidator(_known_currency),
    WithJsonSchema({"type": "string", "enum": list(CURRENCIES)}),
]
Zone = Annotated[
    str | None,
    WithJsonSchema({"anyOf": [{"type": "string", "enum": list(IANA_ZONES)}, {"type": "null"}]}),
]
Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}),
]
_INTEGER = BeforeValidator(_json_integer)
Int = Annotated[int, _INTEGER]
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
    schema_version: Int = Field(default=1, ge=1, le=MAX_SAFE_INT)

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        utc = value.astimezone(UTC)  # years 1970..2999 (the pattern): never overflows
        if utc < EARLIEST:
            raise ValueError("occurred_at is before 1970-01-01T00:00:00Z")
        return utc

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None and value not in _ZONES:
            raise PydanticCustomError("zone", "not an IANA time zone name")
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
    dwell_ms: Annotated[int, Field(ge=0, le=MAX_SAFE_INT), _INTEGER] | None = None


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
        description='A decimal string such as "49.90": no JSON number, sign, exponent, '
        "spaces or underscores.",
    )
    currency: Currency = Field(description="ISO 4217 code.")
    items: Int = Field(ge=1, le=MAX_SAFE_INT)


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
    rating: Int = Field(ge=1, le=5)
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
    complaint: StrictBool
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
    score: Int = Field(json_schema_extra={"minimum": 0, "maximum": 10})
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
    points: Annotated[int, Field(ge=0, le=MAX_POINTS), _INTEGER] | None = None
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
