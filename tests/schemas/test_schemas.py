"""The published JSON Schemas: exactly what the models generate, and exactly what the worker
accepts (a schema-valid payload is never dead-lettered for a schema reason)."""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas.events import ID_FORBIDDEN, ID_PATTERN, ID_SPACES, MODELS
from schemas.export import JSON_DIR, examples, rendered
from schemas.nudges import RECORD_MODELS
from stream import __version__
from stream.core.ingest import Limits, Rejection, accept


def test_json_schemas_match_the_models() -> None:
    expected = rendered()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in JSON_DIR.glob("*.json")}
    stale = sorted(name for name in expected if on_disk.get(name) != expected[name])
    extra = sorted(set(on_disk) - set(expected))
    assert not stale and not extra, (
        f"schemas/json drifted (stale {stale}, extra {extra}): run `python -m schemas.export`"
    )


def test_event_schema_names_every_type() -> None:
    schema = json.loads((JSON_DIR / "event.schema.json").read_text(encoding="utf-8"))
    mapping = schema["discriminator"]["mapping"]
    assert sorted(mapping) == sorted(
        ["click", "purchase", "review", "support_contact", "survey", "loyalty", "consent"]
    )


# ------------------------------------------------------------- the schemas match the worker


#: Reasons that are about the payload itself; the others (key, partition, wall clock, size)
#: depend on how and when it is produced, which no JSON Schema can express.
SCHEMA_REASONS = {"malformed_json", "schema_violation", "unknown_type"}
WALL = datetime(3000, 1, 1, tzinfo=UTC)  # nothing is in the future of it


@cache
def validator(name: str) -> Draft202012Validator:
    schema = json.loads((JSON_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def worker_verdict(payload: dict[str, Any]) -> str | None:
    """None when the worker accepts it, else its DLQ reason."""
    key = str(payload.get("customer_id", "k")).encode()
    out = accept(key, json.dumps(payload).encode(), WALL, Limits())
    return out.reason if isinstance(out, Rejection) else None


@pytest.mark.parametrize("name", [*MODELS, "event", *RECORD_MODELS])
def test_every_schema_has_an_id_and_valid_examples(name: str) -> None:
    schema = json.loads((JSON_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    assert schema["$id"] == f"urn:engage:schema:{name}:{__version__}"
    assert schema["examples"], f"{name}: publish at least one example"
    check = validator(name)
    for example in schema["examples"]:
        errors = [e.message for e in check.iter_errors(example)]
        assert not errors, (name, example, errors)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_event_example_is_accepted_by_the_worker(name: str) -> None:
    for example in examples(MODELS[name]):
        assert worker_verdict(example) is None, example


def test_record_examples_are_valid_records() -> None:
    for model in RECORD_MODELS.values():
        for example in examples(model):
            model.model_validate(example)


def base(kind: str) -> dict[str, Any]:
    return dict(examples(MODELS[kind])[0])


REJECTED_BY_BOTH = [
    base("survey") | {"survey": "nps", "score": 11},
    base("survey") | {"survey": "csat", "score": 0},
    base("survey") | {"survey": "csat", "score": 6},
    base("survey") | {"survey": "ces", "score": 8},
    base("loyalty") | {"action": "tier_changed"},
    base("loyalty") | {"action": "tier_changed", "tier": None},
    base("purchase") | {"amount": "-1"},
    base("purchase") | {"amount": "12.34567"},
    base("purchase") | {"amount": "abc"},
    base("click") | {"tz": "Mars/Olympus_Mons"},
    base("click") | {"occurred_at": "2026-03-02T10:15:00"},
    base("click") | {"occurred_at": "2026-02-30T10:15:00Z"},
    base("click") | {"action": "hover"},
    base("review") | {"rating": 6},
    {k: v for k, v in base("purchase").items() if k != "order_id"},
    # Strict input: what the published schemas always forbade, the worker now refuses too.
    base("purchase") | {"amount": "1E+5"},
    base("purchase") | {"amount": " 49.90 "},
    base("purchase") | {"amount": "4_9.90"},
    base("purchase") | {"amount": "49.90\n"},
    base("purchase") | {"amount": 49.9},
    base("purchase") | {"amount": 49},
    base("purchase") | {"items": "5"},
    base("purchase") | {"items": True},
    base("purchase") | {"currency": "ZZZ"},
    base("purchase") | {"currency": "eur"},
    base("click") | {"occurred_at": 0},
    base("click") | {"occurred_at": 1772452800},
    base("click") | {"occurred_at": "1969-12-31T23:59:59Z"},
    base("click") | {"tz": "localtime"},
    base("click") | {"tz": "Europe"},
    base("click") | {"tz": "posixrules"},
    base("support_contact") | {"complaint": "true"},
    base("support_contact") | {"complaint": 1},
    base("review") | {"rating": "5"},
    base("review") | {"rating": True},
    *(
        base("purchase") | {field: bad}
        for field in ("event_id", "customer_id", "order_id")
        for bad in ("a\x00b", "a\r\nb", "a\n", "\u202egnp.exe", "a\u200bb", "\ufeffa", "   ",
                    "\u3000", "a\u2028")
    ),
]  # fmt: skip


@pytest.mark.parametrize("payload", REJECTED_BY_BOTH, ids=range(len(REJECTED_BY_BOTH)))
def test_what_the_worker_rejects_the_schema_rejects(payload: dict[str, Any]) -> None:
    assert worker_verdict(payload) in SCHEMA_REASONS
    assert not validator(payload["type"]).is_valid(payload)
    assert not validator("event").is_valid(payload)


EDGE_VALUES: dict[str, list[Any]] = {
    "score": [-1, 0, 1, 5, 6, 7, 8, 10, 11, 5.0, "5", None],
    "amount": ["0", "49.90", "1.2345", "1.23456", "-1", "1e3", " 1", "007", 12.5, 10, None,
               "1E+5", " 49.90 ", "4_9.90", "49.90\n", "\uff14\uff19", True],
    "tz": ["UTC", "Europe/Berlin", "US/Eastern", "Mars/Base", "", "utc", None, "Europe",
           "localtime", "posixrules", "Etc/GMT+5", "Europe/Berlin\n"],
    "items": [0, 1, 3, -2, "5", True, 2.0, 2.5],
    "currency": ["EUR", "eur", "EURO", "ZZZ", "JPY", "XXX", 978],
    "order_id": ["o-1", " o-1 ", "   ", "o\x00", "o\r\n", "o\n", "\u202eo", "o\u200b", "\u00a0",
                 "\u0085", "caf\u00e9", "\U0001f600", "o\U000e0041"],
    "complaint": [True, False, "true", 1, 0, None],
    "occurred_at": [
        "2026-03-02T10:15:00Z",
        "2026-03-02T10:15:00.123456+05:30",
        "2026-03-02T10:15:00.1234567Z",
        "2026-03-02 10:15:00Z",
        "2026-03-02T10:15:00",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-12:00",
        "2026-02-29T00:00:00Z",
        "2028-02-29T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "2026-03-02T10:15:00z",
        "2026-03-02T10:15:00Z\n",
        0,
        1772452800,
    ],
    "tier": ["bronze", "platinum", "diamond", None],
    "action": ["tier_changed", "joined", "page_view", "share", "dance"],
    "survey": ["nps", "csat", "ces", "sus"],
    "rating": [0, 1, 5, 6],
    "points": [0, 10, -5, None],
    "dwell_ms": [0, 5, -1],
}  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(sorted(MODELS)),
    changes=st.dictionaries(
        st.sampled_from(sorted(EDGE_VALUES)), st.integers(min_value=0, max_value=99), max_size=4
    ),
)
def test_a_schema_valid_payload_is_never_a_schema_violation(
    kind: str, changes: dict[str, int]
) -> None:
    payload = base(kind)
    for field, pick in changes.items():
        values = EDGE_VALUES[field]
        payload[field] = values[pick % len(values)]
    if validator(kind).is_valid(payload):
        assert worker_verdict(payload) not in SCHEMA_REASONS, payload
        assert validator("event").is_valid(payload)


def test_the_emitters_good_events_are_schema_valid() -> None:
    from stream.tools.emitter.simulation import SimConfig, Simulation

    check = validator("event")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = [item.event for item in Simulation(SimConfig(15, 60, start, 5))]
    assert len(events) > 500
    for event in events:
        errors = [e.message for e in check.iter_errors(event)]
        assert not errors, (event, errors)


def test_the_decision_examples_are_what_the_engine_decides() -> None:
    """The published examples are records the engine produces for the purchase they cite
    (the welcome's anchor is `first_purchase`), not hand-written guesses."""
    from datetime import timedelta

    from schemas.nudges import Decision
    from stream.core.clock import clock_for
    from stream.core.driver import MemoryDriver
    from stream.core.engine import EngineConfig, Record
    from stream.core.ingest import Limits as EngineLimits
    from stream.core.rules import Rules

    for example in Decision.model_json_schema()["examples"]:
        rules = Rules(version=example["rules_version"])
        config = EngineConfig(
            rules,
            clock_for("replay"),
            {"t.purchases": "purchases"},
            "t.clock",
            EngineLimits(max_future_skew=timedelta(days=3650)),
        )
        purchase = {
            "event_id": example["explanation"]["source_event_id"],
            "customer_id": example["customer_id"],
            "type": "purchase",
            "occurred_at": example["due_at"],
            "order_id": example["explanation"]["order_id"],
            "amount": "49.90",
            "currency": "EUR",
            "items": 1,
            "tz": example["tz"],
        }
        key = example["customer_id"].encode()
        value = json.dumps(purchase).encode()
        declare = {"kind": "replay", "replay_id": "r", "ends": {"t.purchases": 1}, "final": None}
        driver = MemoryDriver(config)
        driver.pipe(
            [
                Record("t.purchases", 0, 0, 0, key, value),
                Record("t.clock", 0, 0, 0, None, json.dumps(declare).encode()),
            ],
            wall_ms=4_102_444_800_000,
        )
        decided = [json.loads(v) for v in driver.decisions().values()]
        assert example in decided, decided


# ------------------------------------------------------------------- ids: one rule, stated once


def test_forbidden_id_characters_are_exactly_unicodes_control_format_and_separators() -> None:
    """The packaged ranges are Cc, Cf, Zl and Zp of this Python's Unicode database: a Python
    with a newer Unicode that adds format characters fails here (regenerate the ranges)."""
    cats = {"Cc", "Cf", "Zl", "Zp"}
    forbidden = {cp for a, b in ID_FORBIDDEN for cp in range(a, b + 1)}
    spaces = {cp for a, b in ID_SPACES for cp in range(a, b + 1)}
    assert forbidden == {cp for cp in range(0x110000) if unicodedata.category(chr(cp)) in cats}
    assert spaces == {cp for cp in range(0x110000) if unicodedata.category(chr(cp)) == "Zs"}


_ID_TEXT = st.text(
    st.sampled_from(
        " a\u00e9\x00\t\n\r\x85\u00a0\u200b\u202e\u2028\u3000\ufeff\U0001f600\U000e0041"
    ),
    min_size=1,
    max_size=6,
) | st.text(min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(ident=_ID_TEXT)
def test_the_id_pattern_is_the_workers_id_rule(ident: str) -> None:
    """The schemas' id pattern (as a Python JSON Schema validator reads it) accepts exactly the
    ids the worker accepts."""
    payload = base("purchase") | {"order_id": ident}
    schema_ok = validator("purchase").is_valid(payload)
    assert schema_ok == (re.search(ID_PATTERN, ident) is not None)
    verdict = worker_verdict(payload)
    assert (verdict is None) == schema_ok, (ident, verdict)
    assert verdict in (None, "schema_violation")
