"""The numbers behind the profile (SPEC §3), as one validated model.

Every threshold is a setting with the SPEC's default; the ritual rules file embeds this model,
so one versioned file decides both how state is read and what it triggers.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from schemas.events import CLICK_ACTIONS, Click, EventBase, Loyalty
from schemas.nudges import RITUAL_NAME

# Durations, local times and the ritual definitions live in `ritual_defs` (re-exported here:
# callers read rules through this module).
from stream.core.ritual_defs import (
    ADJUSTABLE,
    ANNIVERSARY_FIELDS,
    COMMON_FIELDS,
    EVENT_FIELDS,
    INACTIVITY_FIELDS,
    STATE_FIELDS,
    TRIGGER_TAGS,
    Duration,
    LocalTime,
    OnAnniversary,
    OnEvent,
    OnInactivity,
    Percent,
    Program,
    RitualDef,
    compile_conditions,
    holds,
    parse_duration_ms,
    parse_local_time,
    template_names,
)


class ProfileRules(BaseModel):
    """State and profile rules; defaults are SPEC §3's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    half_life_days: float = Field(default=14.0, gt=0)
    score_scale: float = Field(default=10.0, gt=0)
    click_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "page_view": 1.0,
            "email_open": 1.0,
            "search": 1.0,
            "link_click": 2.0,
            "email_click": 2.0,
            "share": 3.0,
            "comment": 3.0,
        }
    )
    type_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "purchase": 5.0,
            "review": 4.0,
            "survey": 2.0,
            "support_contact": 1.0,
            "loyalty": 3.0,
        }
    )
    referral_converted_weight: float = Field(default=8.0, ge=0)
    engaged_score: float = Field(default=40.0, ge=0, le=100)
    sentiment_window_days: int = Field(default=90, ge=1)
    sentiment_threshold: float = Field(default=0.2, ge=0, lt=1)
    max_signals: int = Field(default=32, ge=1, le=256)
    active_window_days: int = Field(default=30, ge=7)
    new_days: int = Field(default=30, ge=0)
    at_risk_days: int = Field(default=30, ge=1)
    dormant_days: int = Field(default=90, ge=1)
    reactivation_gap_days: int = Field(default=30, ge=1)
    reactivated_days: int = Field(default=30, ge=1)
    clv_years: int = Field(default=3, ge=1)
    clv_min_years: float = Field(
        default=1.0, gt=0, description="Purchases per year are never extrapolated from less."
    )
    max_tickets: int = Field(default=16, ge=1, le=256)
    dedup_window: int = Field(default=32, ge=32, le=256)
    # Set from the rules file's `consent.marketing_default` (see `Rules`), so a profile shows
    # the consent that applies to a customer who never sent a consent event.
    _marketing_default: str = PrivateAttr(default="opted_in")

    @property
    def marketing_default(self) -> str:
        """`opted_in` or `opted_out`: marketing consent of a customer without a consent event."""
        return self._marketing_default

    def model_post_init(self, _context: object) -> None:
        missing = set(CLICK_ACTIONS) - set(self.click_weights)
        if missing:
            raise ValueError(f"click_weights lacks {sorted(missing)}")
        missing = {"purchase", "review", "survey", "support_contact", "loyalty"} - set(
            self.type_weights
        )
        if missing:
            raise ValueError(f"type_weights lacks {sorted(missing)}")

    def weight(self, event: EventBase) -> float:
        """The engagement weight of one event."""
        if isinstance(event, Click):
            return self.click_weights[event.action]
        if isinstance(event, Loyalty) and event.action == "referral_converted":
            return self.referral_converted_weight
        return self.type_weights[event.type]  # type: ignore[attr-defined]


DEFAULT_RULES = ProfileRules()


# --- rituals ------------------------------------------------------------------------------------

__all__ = ["Duration", "LocalTime", "Percent", "parse_duration_ms", "parse_local_time"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class QuietHours(_Strict):
    enabled: bool = True
    start: LocalTime = parse_local_time("21:00")
    end: LocalTime = parse_local_time("08:00")


class FrequencyCap(_Strict):
    window: Duration = parse_duration_ms("7d")
    max_delivered: int = Field(default=2, ge=0)
    max_marketing: int = Field(default=1, ge=0)


class Guardrails(_Strict):
    quiet_hours: QuietHours = QuietHours()
    frequency_cap: FrequencyCap = FrequencyCap()
    lateness: Duration = parse_duration_ms("24h")


class ConsentRules(_Strict):
    """SPEC §4 Consent: `opted_out` for regions where marketing needs an explicit opt-in."""

    marketing_default: Literal["opted_in", "opted_out"] = "opted_in"


MAX_RITUALS = 64


class Rules(_Strict):
    """The one versioned rules file: its version is stamped on every decision.

    `effective_from` (ms) makes the file apply from that instant of ritual time; `previous`
    is then the rules in force before it (read from the file the `previous` key names)."""

    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$")
    effective_from: int | None = None
    previous: Rules | None = None
    profile: ProfileRules = ProfileRules()
    rituals: dict[str, RitualDef] = Field(
        default_factory=lambda: packaged_rituals(), max_length=MAX_RITUALS
    )
    guardrails: Guardrails = Guardrails()
    consent: ConsentRules = ConsentRules()
    outcome_window: Duration = Field(
        default=parse_duration_ms("7d"),
        description="How long after a decision the customer's activity counts as its outcome.",
    )
    _program: Program | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _profile_knows_consent_default(self) -> Rules:
        """The profile view reads only `ProfileRules`: hand it the consent default (a private
        copy, so a shared default `ProfileRules` instance is never changed)."""
        profile = self.profile.model_copy()
        profile._marketing_default = self.consent.marketing_default
        object.__setattr__(self, "profile", profile)
        return self

    @property
    def program(self) -> Program:
        """The rituals compiled for the evaluator (once per rules object)."""
        if self._program is None:
            self._program = Program.of(self.rituals)
        return self._program

    def at(self, ms: int) -> Rules:
        """The rules in force at instant `ms` of ritual time."""
        rules = self
        while rules.effective_from is not None and ms < rules.effective_from:
            if rules.previous is None:
                break
            rules = rules.previous
        return rules

    def chain(self) -> list[Rules]:
        """This version and every earlier one it names, newest first."""
        out, rules = [], self
        while rules is not None:
            out.append(rules)
            rules = rules.previous
        return out

    @property
    def versions(self) -> tuple[str, ...]:
        """Every version a decision of these rules can carry (a bounded label set)."""
        return tuple(r.version for r in self.chain())

    @property
    def ritual_names(self) -> tuple[str, ...]:
        """Every ritual of every version, in order (a bounded label set)."""
        names: dict[str, None] = {}
        for rules in reversed(self.chain()):
            names.update(dict.fromkeys(rules.rituals))
        return tuple(names)


DEFAULT_RULES_FILE = Path(__file__).with_name("default_rules.yaml")


class RulesError(ValueError):
    """A rules file that cannot be used; `problems` lists each as `FILE:LINE:COL: message`."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


def load_rules(path: str | Path | None = None) -> Rules:
    """Read and validate a rules file (YAML) and the versions it names as `previous`; raises
    RulesError listing every problem, so nothing is ever half-loaded."""
    source = Path(path) if path else DEFAULT_RULES_FILE
    rules, problems = _load(source, seen=())
    if problems or rules is None:
        if len(problems) == 1:
            raise RulesError(problems[0], problems)
        raise RulesError(
            f"invalid rules file {source}:\n" + "\n".join(f"  {p}" for p in problems), problems
        )
    return rules


def check_rules_file(path: str | Path) -> list[str]:
    """Every problem of a rules file (and of the files it names as `previous`), each as
    `FILE:LINE:COL: message`; an empty list when the file is valid."""
    _rules, problems = _load(Path(path), seen=())
    return problems


# --- reading a file -------------------------------------------------------------------------------

Path_ = tuple[str | int, ...]


def _load(source: Path, seen: tuple[Path, ...]) -> tuple[Rules | None, list[str]]:
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{source}:1:1: cannot read rules file: {_plain(exc)}"]
    doc = _Doc(source, text)
    if doc.problems:
        return None, doc.problems
    data = doc.data
    if not isinstance(data, dict):
        return None, [doc.at((), "a rules file is a mapping (version, rituals, guardrails, ...)")]
    problems: list[str] = []
    data = dict(data)
    rituals, origins = _rituals(data.get("rituals"), doc, problems)
    data["rituals"] = rituals
    previous: Rules | None = None
    if "effective_from" in data:
        data["effective_from"] = _instant(data["effective_from"], doc, problems)
    if data.get("previous") is not None:
        target = (source.parent / str(data["previous"])).resolve()
        if target in seen or target == source.resolve():
            problems.append(doc.at(("previous",), "names a file already in the chain (a cycle)"))
        elif not target.is_file():
            problems.append(doc.at(("previous",), f"previous: no such file {target}"))
        else:
            previous, more = _load(target, (*seen, source.resolve()))
            problems += more
    data.pop("previous", None)
    if data.get("effective_from") is not None and "previous" not in doc.data:
        problems.append(
            doc.at(("effective_from",), "needs `previous`: the rules file in force before it")
        )
    try:
        rules = Rules.model_validate({**data, "previous": None})
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if p not in TRIGGER_TAGS)
            where = _origin(loc, origins)
            problems.append(doc.at(where, _message(where, err["msg"])))
        # the rituals that are valid on their own still get their semantic checks
        valid = {}
        for name, entry in (rituals or {}).items():
            try:
                valid[name] = RitualDef.model_validate(entry)
            except ValidationError:
                continue
        return None, problems + _semantic(valid, doc)
    problems += _semantic(rules.rituals, doc)
    if previous is not None:
        if previous.version == rules.version:
            problems.append(doc.at(("version",), "must differ from the previous file's version"))
        if previous.effective_from is not None and (
            rules.effective_from is None or rules.effective_from <= previous.effective_from
        ):
            problems.append(doc.at(("effective_from",), "must be later than the previous file's"))
        object.__setattr__(rules, "previous", previous)
    return (None if problems else rules), problems


def _origin(loc: Path_, origins: dict[Path_, Path_]) -> Path_:
    """Where in the file a value at `loc` came from (a parameter set elsewhere)."""
    for n in range(len(loc), 2, -1):
        if loc[:n] in origins:
            return origins[loc[:n]]
    return loc


def _message(loc: Path_, msg: str) -> str:
    return f"{'.'.join(str(p) for p in loc) or '(file)'}: {msg}"


def _plain(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


def _instant(value: object, doc: _Doc, problems: list[str]) -> int | None:
    from datetime import datetime

    try:
        moment = (
            value
            if isinstance(value, datetime)
            else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        )
        if moment.tzinfo is None:
            raise ValueError
    except ValueError:
        problems.append(
            doc.at(("effective_from",), "not an instant (use e.g. 2026-12-10T00:00:00Z)")
        )
        return None
    return int(moment.timestamp() * 1000)


@lru_cache(maxsize=1)
def _packaged() -> dict[str, dict[str, Any]]:
    """The packaged rituals' raw entries (before parameters are substituted)."""
    data = yaml.load(DEFAULT_RULES_FILE.read_text(encoding="utf-8"), Loader=_Loader)
    return dict(data["rituals"])


@lru_cache(maxsize=1)
def _packaged_defs() -> dict[str, RitualDef]:
    raw, _origins = _rituals({}, _Doc(DEFAULT_RULES_FILE, ""), [])
    return {name: RitualDef.model_validate(entry) for name, entry in raw.items()}


def packaged_rituals() -> dict[str, RitualDef]:
    """The packaged rituals, validated: what a `Rules` built in code has by default."""
    return dict(_packaged_defs())


def _rituals(
    raw: object, doc: _Doc, problems: list[str]
) -> tuple[dict[str, Any], dict[Path_, Path_]]:
    """The file's rituals over the packaged ones: an entry with a trigger defines a ritual (a
    new one, or one replacing the packaged ritual of that name); an entry without adjusts the
    packaged ritual (`enabled`, `holdout_percent`, `template`, `once_per` and its `params`).
    Packaged rituals the file does not name stay as packaged. Also returns, for error
    locations, where each ritual's keys come from in this file."""
    packaged = _packaged()
    out: dict[str, Any] = {name: dict(entry) for name, entry in packaged.items()}
    origins: dict[Path_, Path_] = {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(doc.at(("rituals",), "rituals: a mapping of ritual name to definition"))
        raw = {}
    for name, entry in raw.items():
        here: Path_ = ("rituals", name)
        if not isinstance(name, str) or not re.fullmatch(RITUAL_NAME, name):
            problems.append(
                doc.at(here, f"ritual name {name!r}: lowercase letters, digits and _ (<= 48)")
            )
            continue
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            problems.append(doc.at(here, "a ritual is a mapping"))
            continue
        if "trigger" in entry or "triggers" in entry:
            out[name] = dict(entry)
        elif name in packaged:
            base = dict(packaged[name])
            params = dict(base.get("params") or {})
            for key, value in entry.items():
                if key == "params" and isinstance(value, dict):
                    unknown = set(value) - set(params)
                    for k in sorted(unknown, key=str):
                        problems.append(
                            doc.at((*here, "params", k), _unknown_param(name, k, params))
                        )
                    params.update({k: v for k, v in value.items() if k in params})
                elif key in ADJUSTABLE:
                    base[key] = value
                elif key in params:
                    params[key] = value
                    origins[("rituals", name, key)] = (*here, key)
                else:
                    problems.append(doc.at((*here, key), _unknown_param(name, key, params)))
            base["params"] = params
            out[name] = base
        else:
            problems.append(
                doc.at(here, f"ritual {name!r} is not packaged, so it needs a `trigger`")
            )
            continue
    for name, entry in out.items():
        params = entry.get("params") or {}
        where = {}
        entry_out = _substitute(entry, params, (), where)
        for path, param in where.items():
            src = ("rituals", name, param)
            origins[("rituals", name, *path)] = origins.get(src) or (
                ("rituals", name, "params", param)
                if doc.has(("rituals", name, "params", param))
                else ("rituals", name, *path)
            )
        missing = sorted({p for p in where.values() if p not in params})
        for param in missing:
            problems.append(doc.at(("rituals", name), f"${param} names no entry of `params`"))
        out[name] = entry_out
    return out, origins


def _unknown_param(name: str, key: object, params: dict[str, Any]) -> str:
    known = ", ".join([*ADJUSTABLE, *params])
    return (
        f"rituals.{name}.{key}: unknown key (a ritual without `trigger` adjusts the packaged "
        f"one: {known})"
    )


def _substitute(value: Any, params: dict[str, Any], path: Path_, where: dict) -> Any:
    """`$name` strings replaced by the ritual's parameter `name`; records where."""
    if isinstance(value, str) and value.startswith("$") and path[:1] != ("params",):
        where[path] = value[1:]
        return params.get(value[1:], value)
    if isinstance(value, dict):
        return {k: _substitute(v, params, (*path, k), where) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params, (*path, i), where) for i, v in enumerate(value)]
    return value


def _semantic(rituals: dict[str, RitualDef], doc: _Doc) -> list[str]:
    """What the schema cannot see: fields an event type does not have, conditions that are
    never true, templates naming unknown fields, duplicate rituals."""
    out: list[str] = []
    seen: dict[str, str] = {}
    for name, d in rituals.items():
        here: Path_ = ("rituals", name)

        def bad(path: Path_, msg: str, here: Path_ = here, name: str = name) -> None:
            out.append(doc.at((*here, *path), f"rituals.{name}.{'.'.join(map(str, path))}: {msg}"))

        key = d.model_dump_json(exclude={"enabled", "holdout_percent", "template", "params"})
        if key in seen:
            bad((), f"duplicates ritual {seen[key]!r} (same trigger, wait, anchor and rules)")
        seen.setdefault(key, name)
        triggers = d.all_triggers
        tkey = "trigger" if d.trigger is not None else "triggers"
        names_for_all: set[str] | None = None
        for i, t in enumerate(triggers):
            tpath: Path_ = (tkey,) if d.trigger is not None else (tkey, i)
            if isinstance(t, OnEvent):
                fields = _event_fields(t.kinds)
                _check_when(t.when, t.kinds, (*tpath, "when"), bad)
            elif isinstance(t, OnInactivity):
                fields = set(INACTIVITY_FIELDS)
            else:
                fields = set(ANNIVERSARY_FIELDS)
            fields |= set(STATE_FIELDS)
            for fact, value in t.facts.items():
                for ref in template_names(value) if isinstance(value, str) else []:
                    if ref not in fields:
                        bad(
                            (*tpath, "facts", fact),
                            f"{{{ref}}} is not a field here ({_known(fields)})",
                        )
            names_for_all = fields if names_for_all is None else names_for_all & fields
        for ref in template_names(d.anchor):
            if names_for_all is not None and ref not in names_for_all:
                bad(
                    ("anchor",),
                    f"{{{ref}}} is not a field of every trigger ({_known(names_for_all)})",
                )
        if any(isinstance(t, OnAnniversary) for t in triggers) and "year" not in template_names(
            d.anchor
        ):
            bad(("anchor",), "an anniversary anchor must name {year} (one decision per year)")
        if any(isinstance(t, OnInactivity) for t in triggers) and "event_id" not in template_names(
            d.anchor
        ):
            bad(("anchor",), "an inactivity anchor must name {event_id} (one decision per spell)")
        facts = set().union(*(t.facts for t in triggers))
        for i, c in enumerate(d.cancel):
            _check_when(c.when, c.kinds, ("cancel", i, "when"), bad)
            fields = _event_fields(c.kinds)
            for m in c.match:
                if m not in fields:
                    bad(
                        ("cancel", i, "match"),
                        f"{m!r} is not a field of {'/'.join(c.kinds)} events",
                    )
                elif m not in facts:
                    bad(
                        ("cancel", i, "match"), f"{m!r} must be one of the trigger's facts to match"
                    )
        for i, c in enumerate(d.cancel_if):
            for field_ in c.when:
                if field_ != "open_complaints":
                    bad(("cancel_if", i, "when", field_), "state conditions test open_complaints")
        if d.audience == "service_team" and d.consent == "marketing":
            bad(("consent",), "a service-team ritual never asks for the customer's consent")
    return out


def _event_fields(kinds: tuple[str, ...]) -> set[str]:
    """Fields every one of these event types has."""
    sets = [set(EVENT_FIELDS[k]) | set(COMMON_FIELDS) for k in kinds]
    return set.intersection(*sets) if sets else set()


def _known(fields: set[str]) -> str:
    return "known: " + ", ".join(sorted(fields))


def _check_when(when: dict, kinds: tuple[str, ...], path: Path_, bad: Any) -> None:
    """Unknown fields, and conditions no event of these types can meet (unreachable)."""
    fields = _event_fields(kinds) - {"at"}
    for name, test in when.items():
        if name not in fields:
            bad((*path, name), f"not a field of {'/'.join(kinds)} events ({_known(fields)})")
            continue
        for kind in kinds:
            allowed = EVENT_FIELDS[kind].get(name)
            if kind == "survey" and name == "score" and "survey" in when:
                low, high = _survey_range(when["survey"])
                allowed = tuple(range(low, high + 1))
            if allowed is None:
                continue
            conds = compile_conditions({name: test})
            if not any(holds(conds, {name: v}) for v in allowed):
                bad((*path, name), f"never true for a {kind} event (possible values: "
                    f"{', '.join(map(str, allowed))})")  # fmt: skip


def _survey_range(test: Any) -> tuple[int, int]:
    from schemas.events import SURVEY_RANGES

    kinds = [k for k in SURVEY_RANGES if holds(compile_conditions({"s": test}), {"s": k})]
    if not kinds:
        return (0, -1)
    return min(SURVEY_RANGES[k][0] for k in kinds), max(SURVEY_RANGES[k][1] for k in kinds)


MAX_RULES_BYTES = 1 << 20
MAX_DEPTH = 64


def _flow_depth(text: str) -> int:
    """The deepest nesting of YAML flow brackets (an upper bound: quotes are not skipped), so a
    hostile file cannot make the YAML parser work for minutes."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, reading timestamps as text (an instant is parsed and checked here,
    with a message, instead of failing inside the YAML library)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Doc:
    """A YAML document with the line and column of every key, and its duplicate keys."""

    def __init__(self, source: Path, text: str) -> None:
        self.source = source
        self.marks: dict[Path_, tuple[int, int]] = {}
        self.problems: list[str] = []
        self.data: Any = None
        if len(text) > MAX_RULES_BYTES:
            self.problems.append(f"{source}:1:1: larger than {MAX_RULES_BYTES} bytes")
            return
        if _flow_depth(text) > MAX_DEPTH:
            self.problems.append(f"{source}:1:1: nested more than {MAX_DEPTH} levels deep")
            return
        try:
            for event in yaml.parse(text, Loader=_Loader):
                if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                    mark = event.start_mark
                    self.problems.append(
                        f"{source}:{mark.line + 1}:{mark.column + 1}: YAML anchors and aliases "
                        "are not supported in a rules file"
                    )
                    return
            node = yaml.compose(text, Loader=_Loader)
            self.data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            what = getattr(exc, "problem", None) or "not YAML"
            self.problems.append(f"{source}:{line}:{col}: not valid YAML: {what}")
            return
        except (RecursionError, ValueError, TypeError, OverflowError) as exc:
            self.problems.append(f"{source}:1:1: not a usable YAML document ({type(exc).__name__})")
            return
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        self.marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            keys: set[object] = set()
            for k, v in node.value:
                key = k.value
                if key in keys:
                    where = f"{self.source}:{k.start_mark.line + 1}:{k.start_mark.column + 1}"
                    label = ".".join(map(str, (*path, key)))
                    self.problems.append(f"{where}: {label}: duplicate key (defined twice)")
                keys.add(key)
                self.marks[(*path, key)] = (k.start_mark.line + 1, k.start_mark.column + 1)
                self._walk(v, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, (*path, i))

    def has(self, path: Path_) -> bool:
        """Whether the file itself has this key."""
        return path in self.marks

    def at(self, path: Path_, message: str) -> str:
        """`FILE:LINE:COL: message` at the deepest part of `path` the file has."""
        for n in range(len(path), -1, -1):
            mark = self.marks.get(tuple(path[:n]))
            if mark is not None:
                return f"{self.source}:{mark[0]}:{mark[1]}: {message}"
        return f"{self.source}:1:1: {message}"
