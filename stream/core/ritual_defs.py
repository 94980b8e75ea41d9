"""Ritual definitions as data: the schema of a ritual entry in the rules file, and its compiled
form the generic evaluator (`stream.core.rituals`) runs.

A ritual is a trigger (an event with field conditions, an inactivity spell, or the yearly
anniversary of the first purchase at a local time), an optional wait (a duration and/or until a
local time of day), cancel conditions during the wait, state conditions checked when deciding,
an anchor (at most one decision per anchor), an audience, a category, a consent scope, a
holdout percentage, a once-per window and a free `template` key carried on the nudge.

Pure: no I/O. Parsing a file and reporting problems with their line and column is
`stream.core.rules`'s job.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from schemas.events import CLICK_ACTIONS, SURVEY_RANGES, TIERS

# --- durations and local times ----------------------------------------------------------------

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(value: object) -> int:
    """'72h', '30d', '1500ms', '90s' or a number of seconds -> milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value * 1000)
    text = str(value).strip()
    for unit in ("ms", "s", "m", "h", "d"):
        number = text.removesuffix(unit)
        if number != text:
            try:
                return int(float(number) * _UNITS_MS[unit])
            except ValueError:
                break
    raise ValueError(f"not a duration: {value!r} (use e.g. 72h, 30d, 90s, 500ms)")


def parse_local_time(value: object) -> int:
    """'08:00' -> minutes after local midnight."""
    hours, _, minutes = str(value).partition(":")
    try:
        h, m = int(hours), int(minutes or 0)
    except ValueError:
        raise ValueError(f"not a local time: {value!r} (use HH:MM)") from None
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ValueError(f"not a local time: {value!r}")
    return h * 60 + m


Duration = Annotated[int, BeforeValidator(parse_duration_ms), Field(gt=0)]
LocalTime = Annotated[int, BeforeValidator(parse_local_time)]
Percent = Annotated[float, Field(ge=0, le=100)]


class Strict(BaseModel):
    """Frozen, and an unknown key is an error (a typo never silently does nothing)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# --- what a condition may name ------------------------------------------------------------------

Kind = Literal["click", "purchase", "review", "support_contact", "survey", "loyalty"]
#: Event fields a condition, an anchor or a fact may name, per event type, with the values the
#: event contract allows (None: any string or number). `first_purchase`, `new_top_tier` and
#: `previous_top_tier` are derived from the customer's state just before the event.
EVENT_FIELDS: dict[str, dict[str, tuple[Any, ...] | None]] = {
    "click": {"action": CLICK_ACTIONS, "nudge_id": None},
    "purchase": {"order_id": None, "first_purchase": (True, False)},
    "review": {"order_id": None, "rating": (1, 2, 3, 4, 5)},
    "support_contact": {
        "ticket_id": None,
        "status": ("opened", "resolved", "reopened"),
        "complaint": (True, False),
    },
    "survey": {"survey": tuple(SURVEY_RANGES), "score": tuple(range(0, 11))},
    "loyalty": {
        "action": (
            "joined", "points_earned", "points_redeemed", "tier_changed", "referral_sent",
            "referral_converted",
        ),
        "tier": TIERS,
        "new_top_tier": (True, False),
        "previous_top_tier": (*TIERS, None),
    },
}  # fmt: skip
#: Every event has these.
COMMON_FIELDS = ("event_id", "type", "at")
#: Customer state a `cancel_if` condition may test, and a fact may name.
STATE_FIELDS = ("open_complaints", "first_purchase_day")
#: Facts of the time-based triggers.
INACTIVITY_FIELDS = ("event_id", "type", "at", "inactivity_s")
ANNIVERSARY_FIELDS = ("year", "first_purchase_day", "source_event_id")

Scalar = str | int | float | bool | None


class Test(Strict):
    """Comparisons of one field; all given must hold. A bare value means `eq`."""

    eq: Scalar = None
    ne: Scalar = None
    lt: float | None = None
    le: float | None = None
    gt: float | None = None
    ge: float | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    not_in: list[Scalar] | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, value: object) -> object:
        if not isinstance(value, dict):
            return {"eq": value}
        if not value:
            raise ValueError("an empty condition")
        return value


Conditions = dict[str, Test]


class OnEvent(Strict):
    """Triggered by an event of one of `event`'s types whose fields meet `when`."""

    event: Kind | list[Kind]
    when: Conditions = {}
    facts: dict[str, Scalar] = {}

    @property
    def kinds(self) -> tuple[str, ...]:
        """The event types this trigger listens to."""
        return (self.event,) if isinstance(self.event, str) else tuple(self.event)


class OnInactivity(Strict):
    """Due `inactivity` after the customer's latest activity: every activity moves it, an
    activity after it fell due but before a deferred decision cancels it (activity_resumed)."""

    inactivity: Duration
    facts: dict[str, Scalar] = {}


class OnAnniversary(Strict):
    """Due at `local_time` on each yearly anniversary of the first purchase's local date
    (29 February: 28 February in common years); anchors `year` (1, 2, ...)."""

    anniversary: Literal["first_purchase"]
    local_time: LocalTime = parse_local_time("10:00")
    facts: dict[str, Scalar] = {}


def _trigger_tag(value: object) -> str:
    """Which kind of trigger an entry is, from the key that names it."""
    if isinstance(value, dict):
        if "inactivity" in value:
            return "on_inactivity"
        if "anniversary" in value:
            return "on_anniversary"
        return "on_event"
    if isinstance(value, OnInactivity):
        return "on_inactivity"
    return "on_anniversary" if isinstance(value, OnAnniversary) else "on_event"


#: Union tags pydantic puts in error locations (dropped when a problem is reported).
TRIGGER_TAGS = ("on_event", "on_inactivity", "on_anniversary")
Trigger = Annotated[
    Annotated[OnEvent, Tag("on_event")]
    | Annotated[OnInactivity, Tag("on_inactivity")]
    | Annotated[OnAnniversary, Tag("on_anniversary")],
    Discriminator(_trigger_tag),
]


class Wait(Strict):
    """Decide later: `for` a duration, then (or at once) `until` the next local time of day."""

    for_: Duration | None = Field(default=None, alias="for")
    until: LocalTime | None = None

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: object) -> object:
        return value if isinstance(value, dict) else {"for": value}

    @model_validator(mode="after")
    def _something(self) -> Wait:
        if self.for_ is None and self.until is None:
            raise ValueError("a wait needs `for` (a duration) or `until` (a local time)")
        return self


class Cancel(Strict):
    """While a decision waits, an event of `event`'s types meeting `when` cancels it. `match`
    names fields the event and the waiting decision's facts share: the event cancels only a
    decision with the same value, or any when it names no value (a review naming no order)."""

    event: Kind | list[Kind]
    when: Conditions = {}
    match: list[str] = []
    reason: str = Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The event types that may cancel."""
        return (self.event,) if isinstance(self.event, str) else tuple(self.event)


class CancelIf(Strict):
    """When deciding, the customer's state meeting `when` cancels the decision with `reason`
    (the tested state values join the explanation)."""

    when: Conditions
    reason: str = Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")


#: Keys an entry that only adjusts a packaged ritual may set (besides its `params`).
ADJUSTABLE = ("enabled", "holdout_percent", "template", "once_per")


class RitualDef(Strict):
    """One ritual of the rules file."""

    enabled: bool = True
    audience: Literal["customer", "service_team"] = "customer"
    category: Literal["care", "marketing", "recovery"] = "care"
    consent: Literal["marketing", "service"] | None = None
    holdout_percent: Percent = 10.0
    trigger: Trigger | None = None
    triggers: list[Trigger] = []
    anchor: str = Field(default="{event_id}", min_length=1, max_length=200)
    wait: Wait | None = None
    while_waiting: Literal["parallel", "ignore", "restart"] = "parallel"
    cancel: list[Cancel] = []
    cancel_if: list[CancelIf] = []
    once_per: Duration | None = None
    template: str | None = Field(default=None, min_length=1, max_length=200)
    params: dict[str, Scalar] = {}

    @model_validator(mode="after")
    def _one_kind_of_trigger(self) -> RitualDef:
        every = self.all_triggers
        if not every:
            raise ValueError("a ritual needs `trigger` (or `triggers`)")
        if self.trigger is not None and self.triggers:
            raise ValueError("give `trigger` or `triggers`, not both")
        timed = [t for t in every if not isinstance(t, OnEvent)]
        if timed and len(every) > 1:
            raise ValueError("an inactivity or anniversary trigger must be the only trigger")
        if timed and self.wait is not None:
            raise ValueError("`wait` applies to event triggers only")
        if timed and self.cancel:
            raise ValueError("`cancel` applies to event triggers with a wait only")
        if self.cancel and self.wait is None:
            raise ValueError("`cancel` needs a `wait` (there is nothing to cancel otherwise)")
        if self.while_waiting != "parallel" and self.wait is None:
            raise ValueError("`while_waiting` needs a `wait`")
        return self

    @property
    def all_triggers(self) -> list[Trigger]:
        """`trigger` and `triggers` as one list."""
        return [self.trigger] if self.trigger is not None else list(self.triggers)

    @property
    def consent_scope(self) -> str:
        """The consent a customer-facing decision needs: marketing ones need marketing."""
        if self.consent is not None:
            return self.consent
        return "marketing" if self.category == "marketing" else "service"


# --- templates (anchors and facts) --------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def template_names(text: str) -> list[str]:
    """The `{name}` placeholders of an anchor or fact template."""
    return _PLACEHOLDER.findall(text)


Render = Callable[[Any], Any]


def compile_template(value: Scalar) -> Render:
    """An anchor or fact template as a function of the fields, decided once: a constant, one
    field (a lone `{name}` keeps the field's type: a number stays a number), or text with
    each placeholder replaced by the field's text."""
    if not isinstance(value, str) or "{" not in value:
        return lambda _fields: value
    m = _PLACEHOLDER.fullmatch(value)
    if m is not None:
        name = m.group(1)
        return lambda fields: fields[name]
    parts = _PLACEHOLDER.split(value)  # text, name, text, name, ..., text
    texts, names = parts[0::2], parts[1::2]

    def text(fields: Any) -> str:
        out = [texts[0]]
        for name, after in zip(names, texts[1:], strict=True):
            out.append(_text(fields[name]))
            out.append(after)
        return "".join(out)

    return text


def compile_facts(facts: Mapping[str, Scalar]) -> Callable[[Any], dict[str, Any]]:
    """A trigger's facts as one function of the fields."""
    items = tuple((key, compile_template(value)) for key, value in facts.items())
    return lambda fields: {key: fn(fields) for key, fn in items}


def _text(value: Any) -> str:
    return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# --- compiled form ------------------------------------------------------------------------------

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "in_": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
}


def compile_conditions(
    conds: Conditions,
) -> tuple[tuple[str, Callable[[Any, Any], bool], Any], ...]:
    """(field, comparison, value) triples; a comparison with a missing value is false."""
    out = []
    for name, test in conds.items():
        for op in sorted(test.model_fields_set):
            out.append((name, _OPS[op], getattr(test, op)))
    return tuple(out)


def holds(conds: tuple[tuple[str, Callable[[Any, Any], bool], Any], ...], fields: Any) -> bool:
    """Every condition holds for these fields (an ordering comparison with None is false)."""
    for name, op, value in conds:
        got = fields[name]
        try:
            if not op(got, value):
                return False
        except TypeError:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Compiled:
    """A ritual ready for the evaluator: its definition and precomputed lookups."""

    name: str
    rank: int
    d: RitualDef
    audience: str
    category: str
    marketing: bool  # counts as marketing for the frequency cap (category marketing)
    marketing_consent: bool  # needs marketing consent
    timed: bool  # decided at a due time (a wait, inactivity or anniversary): lateness applies
    anchor: Render = str
    facts: dict[int, Callable[[Any], dict[str, Any]]] = field(default_factory=dict)  # by id
    triggers: tuple[tuple[OnEvent, tuple], ...] = ()
    cancels: tuple[tuple[Cancel, tuple], ...] = ()
    cancel_if: tuple[tuple[CancelIf, tuple], ...] = ()
    inactivity: OnInactivity | None = None
    anniversary: OnAnniversary | None = None


@dataclass(frozen=True)
class Program:
    """Every ritual of a rules file, compiled and indexed by the event types that concern it."""

    rituals: tuple[Compiled, ...]
    by_name: dict[str, Compiled] = field(default_factory=dict)
    triggers: dict[str, tuple[tuple[Compiled, OnEvent, tuple], ...]] = field(default_factory=dict)
    cancels: dict[str, tuple[tuple[Compiled, Cancel, tuple], ...]] = field(default_factory=dict)
    inactivity: tuple[Compiled, ...] = ()
    anniversaries: tuple[Compiled, ...] = ()
    inactivity_names: frozenset[str] = frozenset()  # names of the `inactivity` rituals
    # (inactivity ms, name) of the enabled `inactivity` rituals, by duration then rank: the
    # spells every activity starts, in the order they fall due
    spells: tuple[tuple[int, str], ...] = ()

    @staticmethod
    def of(defs: Mapping[str, RitualDef]) -> Program:
        """Compile the rituals in file order (the order that breaks ties between timers)."""
        compiled = []
        for rank, (name, d) in enumerate(defs.items()):
            trig = d.all_triggers
            events = tuple((t, compile_conditions(t.when)) for t in trig if isinstance(t, OnEvent))
            compiled.append(
                Compiled(
                    name=name,
                    rank=rank,
                    d=d,
                    audience=d.audience,
                    category=d.category,
                    marketing=d.category == "marketing",
                    marketing_consent=d.consent_scope == "marketing",
                    timed=d.wait is not None or not events,
                    triggers=events,
                    cancels=tuple((c, compile_conditions(c.when)) for c in d.cancel),
                    cancel_if=tuple((c, compile_conditions(c.when)) for c in d.cancel_if),
                    inactivity=next((t for t in trig if isinstance(t, OnInactivity)), None),
                    anniversary=next((t for t in trig if isinstance(t, OnAnniversary)), None),
                    anchor=compile_template(d.anchor),
                    facts={id(t): compile_facts(t.facts) for t in trig},
                )
            )
        triggers: dict[str, list] = {}
        cancels: dict[str, list] = {}
        for c in compiled:
            for t, conds in c.triggers:
                for kind in t.kinds:
                    triggers.setdefault(kind, []).append((c, t, conds))
            for k, conds in c.cancels:
                for kind in k.kinds:
                    cancels.setdefault(kind, []).append((c, k, conds))
        return Program(
            rituals=tuple(compiled),
            by_name={c.name: c for c in compiled},
            triggers={k: tuple(v) for k, v in triggers.items()},
            cancels={k: tuple(v) for k, v in cancels.items()},
            inactivity=tuple(c for c in compiled if c.inactivity is not None),
            anniversaries=tuple(c for c in compiled if c.anniversary is not None),
            inactivity_names=frozenset(c.name for c in compiled if c.inactivity is not None),
            spells=tuple(
                sorted(
                    (
                        (c.inactivity.inactivity, c.name)
                        for c in compiled
                        if c.inactivity is not None and c.d.enabled
                    ),
                    key=lambda spell: spell[0],  # stable: rank order among equal durations
                )
            ),
        )
