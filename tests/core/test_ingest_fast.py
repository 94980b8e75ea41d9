"""The msgspec fast path of ingest against the reference path: same answer for every input.

`accept(..., fast=True)` (the default, what the worker runs) and `accept(..., fast=False)` (the
strict Python parser, the reference) must return equal events (same values of the same types,
in the same order, same fields set) or equal rejections (same reason, same message), and
`fast_ingest.parse` must either decline (None) or return exactly the reference's document.
Fed with valid traffic (the schemas' examples, the persona emitter, the test builders) and
hostile traffic (every `stream.tools.hostile` category, the emitter's bad messages, byte-level
mutations, and the leniencies msgspec has where the reference has none).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import DECIMAL_PATTERN, EVENT_TYPES, IANA_ZONES, MODELS, EventBase
from stream.core import fast_ingest
from stream.core.ingest import Limits, Rejection, accept, parse_json
from stream.tools.emitter.faults import FaultMixer
from stream.tools.emitter.simulation import SimConfig, Simulation
from stream.tools.emitter.wire import encode, message
from stream.tools.hostile import CATEGORIES, generate, make
from tests.factory import T0, event

NOW = T0 + timedelta(days=1)
LIMITS = Limits()


def _typed(value: Any) -> Any:
    """A value with its types made explicit, so 1 == 1.0 == True compare unequal."""
    if isinstance(value, dict):
        return ("dict", [(k, _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    return (type(value).__name__, repr(value))


def _snapshot(out: EventBase | Rejection) -> Any:
    if isinstance(out, Rejection):
        return out
    return (
        type(out),
        _typed(dict(out.__dict__)),
        sorted(out.model_fields_set),
        out.__pydantic_extra__,
        out.__pydantic_private__,
        None if out.occurred_at.tzinfo is None else out.occurred_at.tzinfo,
    )


def same(key: bytes | None, value: bytes | None, wall: datetime = NOW, **kw: Any) -> Any:
    """Assert both paths agree on one message (and the parsers on its document); returns the
    fast path's answer."""
    fast = accept(key, value, wall, LIMITS, **kw)
    ref = accept(key, value, wall, LIMITS, fast=False, **kw)
    assert _snapshot(fast) == _snapshot(ref), (value, fast, ref)
    if value:
        doc = fast_ingest.parse(value)
        if doc is not None:
            reference = parse_json(value)
            assert not isinstance(reference, Rejection), (value, reference)
            assert _typed(doc) == _typed(reference), value
    return fast


def compact(doc: dict[str, Any]) -> bytes:
    return msgspec.json.encode(doc)


# --- valid traffic: identical events, and the fast path really takes them ---------------------


def _examples() -> list[dict[str, Any]]:
    return [ex for model in MODELS.values() for ex in model.model_json_schema()["examples"]]


@pytest.mark.parametrize("doc", _examples(), ids=lambda d: d["event_id"])
def test_schema_examples_take_the_fast_path_with_identical_events(doc: dict[str, Any]) -> None:
    key = doc["customer_id"].encode()
    for value in (compact(doc), json.dumps(doc).encode(), json.dumps(doc, indent=2).encode()):
        assert fast_ingest.parse(value) is not None, value
        out = same(key, value)
        assert isinstance(out, EventBase), out


def test_persona_traffic_takes_the_fast_path_with_identical_events() -> None:
    sim = Simulation(SimConfig(200, 30, datetime(2026, 3, 1, tzinfo=UTC), 5))
    kinds: set[str] = set()
    for n, emitted in enumerate(sim, 1):
        msg = message(emitted.at_ms, emitted.type, emitted.customer_id, emitted.event)
        assert fast_ingest.parse(msg.value) is not None, msg.value
        wall = datetime.fromtimestamp(emitted.at_ms / 1000, UTC)
        out = same(msg.key, msg.value, wall, partition=0, partitions=1)
        assert isinstance(out, EventBase), out
        kinds.add(out.type)  # type: ignore[attr-defined]
        if n >= 1000 and kinds == set(EVENT_TYPES):
            break
    assert kinds == set(EVENT_TYPES)


def test_emitter_bad_messages_get_identical_rejections() -> None:
    sim = Simulation(SimConfig(20, 10, datetime(2026, 3, 1, tzinfo=UTC), 6))
    # file mode: the reasons a message carries by itself (no partition count, no wall clock)
    mixer = FaultMixer(6, 0.5, file_mode=True, wall_now=lambda: NOW)
    bad = 0
    for i, emitted in enumerate(sim):
        good = message(emitted.at_ms, emitted.type, emitted.customer_id, emitted.event)
        for msg in mixer.before(good, emitted.event):
            out = same(msg.key, msg.value, NOW)
            assert isinstance(out, Rejection) and out.reason == msg.reason, (msg, out)
            bad += 1
        if i >= 600:
            break
    assert bad > 100


_NOT_ZONES = ("Mars/Olympus", "", "x" * 65, "Europe", "America", "localtime", "posixrules", "Etc")
_zones = st.sampled_from((*IANA_ZONES[:40], "UTC", "Europe/Berlin", *_NOT_ZONES, "../etc/passwd"))
_text = st.text(max_size=30)  # quotes, backslashes, controls, non-ASCII, surrogates


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(EVENT_TYPES),
    customer=st.text(min_size=1, max_size=130),
    seconds=st.integers(min_value=-86_400, max_value=86_400 * 365 * 60),
    micros=st.sampled_from([0, 1, 500_000, 123_456]),
    offset_min=st.integers(min_value=-24 * 60 + 1, max_value=24 * 60 - 1),
    tz=st.none() | _zones,
    extra=st.dictionaries(
        st.sampled_from(["x", "note", "schema_version", "url", "source", "tier", "dwell_ms"]),
        st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | _text,
        max_size=2,
    ),
    pretty=st.booleans(),
    ascii_only=st.booleans(),
)
def test_builder_events_are_identical(
    kind: str,
    customer: str,
    seconds: int,
    micros: int,
    offset_min: int,
    tz: str | None,
    extra: dict[str, Any],
    pretty: bool,
    ascii_only: bool,
) -> None:
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, microseconds=micros)
    local = when.astimezone(timezone(timedelta(minutes=offset_min)))
    doc = event(kind, customer, occurred_at=local.isoformat(), **extra)
    if tz is not None:
        doc["tz"] = tz
    value = json.dumps(doc, indent=1 if pretty else None, ensure_ascii=ascii_only).encode(
        "utf-8", "surrogatepass"
    )
    same(customer.encode("utf-8", "surrogatepass"), value, max(NOW, when))


@settings(max_examples=200, deadline=None)
@given(
    amount=st.from_regex(DECIMAL_PATTERN, fullmatch=True)
    | st.sampled_from(["-1", "1e3", "00.5", "1.23456", "NaN", "Infinity", " 1", "1_000",
                       "1E+5", " 49.90 ", "4_9.90", "49.90\n", "\uff14\uff19", "", True])
    | st.integers(min_value=-5, max_value=10**20)
    | st.floats(allow_nan=False),
    items=st.integers(min_value=-1, max_value=2**54)
    | st.sampled_from(["2", "5", True, False, 1.0, 2.5, None]),
    currency=st.sampled_from(["EUR", "JPY", "XXX", "ZZZ", "eur", "EURO", "", 978]),
    ident=st.sampled_from(["o-1", " o-1 ", "   ", "\u3000", "o\x00", "o\r\n", "\u202eo", "o\u200b",
                           "\ufeffo", "o\u2028", "caf\u00e9", "\U0001f600", "o\U000e0041", ""]),
    score=st.integers(min_value=-1, max_value=12),
    survey=st.sampled_from(["nps", "csat", "ces", "xyz"]),
    action=st.sampled_from(["joined", "tier_changed", "points_earned"]),
    tier=st.none() | st.sampled_from(["gold", "tin"]),
    complaint=st.sampled_from([True, False, "true", 1, 0, None]),
)  # fmt: skip
def test_field_values_get_identical_answers(
    amount: Any,
    items: Any,
    score: int,
    survey: str,
    action: str,
    tier: str | None,
    complaint: Any,
    currency: Any,
    ident: str,
) -> None:
    """Strictness (\"2\" or true for an integer, 1 or \"true\" for a boolean, numbers or
    exponents for an amount, made-up currencies, ids with control, format or bidi characters)
    and the model validators (survey ranges, a tier change's tier)."""
    docs = [
        event("purchase", amount=amount, items=items, currency=currency, order_id=ident),
        event("survey", survey=survey, score=score),
        event("loyalty", action=action, **({} if tier is None else {"tier": tier})),
        event("support_contact", complaint=complaint),
    ]
    for doc in docs:
        same(b"c1", compact(doc))


#: What the published schemas forbid and the worker used to accept: each is a schema violation
#: on both paths, with a message that names the field and never quotes the value.
STRICT_CASES: list[tuple[str, dict[str, Any]]] = [
    ("purchase", {"amount": "1E+5"}),
    ("purchase", {"amount": " 49.90 "}),
    ("purchase", {"amount": "4_9.90"}),
    ("purchase", {"amount": 49.9}),
    ("purchase", {"amount": 49}),
    ("purchase", {"items": "5"}),
    ("purchase", {"items": True}),
    ("purchase", {"currency": "ZZZ"}),
    ("click", {"occurred_at": 0}),
    ("click", {"occurred_at": 1772452800}),
    ("click", {"occurred_at": "2026-03-02 12:00:00Z"}),
    ("click", {"tz": "localtime"}),
    ("click", {"tz": "Europe"}),
    ("click", {"tz": "posixrules"}),
    ("support_contact", {"complaint": "true"}),
    ("review", {"rating": "5"}),
    *(
        ("purchase", {field: bad})
        for field in ("event_id", "customer_id", "order_id")
        for bad in ("ab\x00", "ab\r\nX-Forged: 1", "\u202egnp.exe", "ab\u200b", "   ", "\u3000")
    ),
    ("click", {"session_id": "s\x1b[31m"}),
    ("click", {"nudge_id": "\u2066n\u2069"}),
]


@pytest.mark.parametrize(("kind", "change"), STRICT_CASES, ids=lambda v: repr(v)[:40])
def test_what_the_schema_forbids_is_a_schema_violation_on_both_paths(
    kind: str, change: dict[str, Any]
) -> None:
    doc = event(kind) | change
    key = doc["customer_id"].encode()
    for value in (compact(doc), json.dumps(doc).encode()):
        out = same(key, value)
        assert isinstance(out, Rejection), (change, out)
        assert out.reason == "schema_violation", (change, out)
        [(field, bad)] = change.items()
        assert out.message.startswith(f"{field}: ") and len(out.message) <= 200, out
        if isinstance(bad, str) and bad.strip():
            assert bad.strip() not in out.message, out  # never the payload


# --- hostile traffic: identical rejections -----------------------------------------------------


def test_every_hostile_category_gets_identical_answers() -> None:
    samples = [event(k, customer=f"c{i}") for i, k in enumerate(EVENT_TYPES * 3)]
    seen = set()
    for item in generate(len(CATEGORIES) * 20, samples, seed="fast", wall_now=NOW):
        out = same(item.key, item.value)
        assert isinstance(out, Rejection) and out.reason == item.reason, (item.category, out)
        seen.add(item.category)
    assert seen == set(CATEGORIES)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32), category=st.sampled_from(sorted(CATEGORIES)))
def test_generated_hostile_messages_get_identical_answers(seed: int, category: str) -> None:
    doc = event(EVENT_TYPES[seed % len(EVENT_TYPES)])
    item = make(category, doc, random.Random(seed), NOW)
    same(item.key, item.value)


_BASE = compact(event("click", session_id="s-1", dwell_ms=5, tz="Europe/Berlin"))


@pytest.mark.parametrize(
    "value",
    [
        _BASE[:-1] + b',"event_id":"ev-x"}',  # duplicate key, msgspec keeps the last
        _BASE[:-1] + b',"type":"click"}',
        _BASE[:-1] + b',"dwell_ms":7}',  # a repeated integer member
        _BASE[:-1] + b' ,"dwell_ms" : 7}',
        _BASE[:-1] + b',"x":{"a":1,"a":2}}',  # nested duplicate
        _BASE[:-1] + b',"x":[{"a":1,"a":2}]}',
        _BASE[:-1] + b',"session_id":null}',
        _BASE[:-1] + b',"session_id":"\\ud800"}',  # lone surrogate
        _BASE[:-1] + b',"x":"\\udc00"}',
        _BASE[:-1] + b',"x":"\\ud83d\\ude00"}',  # a valid pair
        _BASE[:-1] + b',"x":"\xed\xa0\x80"}',  # a surrogate in UTF-8: invalid
        _BASE[:-1] + b',"\xff":1}',  # invalid UTF-8 in a key
        _BASE[:-1] + b',"x":"\xc0\x80"}',  # overlong
        _BASE[:-1] + b',"x":"\x7f"}',
        _BASE[:-1] + b',"x":"a\tb"}',  # raw control character
        _BASE[:-1] + b',"x":NaN}',
        _BASE[:-1] + b',"x":Infinity}',
        _BASE[:-1] + b',"x":1e400}',
        _BASE[:-1] + b',"x":1.0}',
        _BASE[:-1] + b',"x":-0}',
        _BASE[:-1] + b',"x":01}',
        _BASE[:-1] + b',"x":+1}',
        _BASE[:-1] + b',"x":.5}',
        _BASE[:-1] + b',"x":' + b"9" * 64 + b"}",
        _BASE[:-1] + b',"x":' + b"9" * 65 + b"}",
        _BASE[:-1] + b',"x":-' + b"9" * 65 + b"}",
        _BASE[:-1] + b',"x":9223372036854775808}',
        _BASE[:-1] + b',"x":-9223372036854775809}',
        _BASE.replace(b'"dwell_ms":5', b'"dwell_ms":' + b"9" * 65),
        _BASE.replace(b'"dwell_ms":5', b'"dwell_ms":9223372036854775807'),
        _BASE.replace(b'"dwell_ms":5', b'"dwell_ms":5.0'),
        _BASE.replace(b'"dwell_ms":5', b'"dwell_ms":"5"'),
        _BASE.replace(b'"dwell_ms":5', b'"dwell_ms":true'),
        _BASE[:-1] + b',"x":[' * 3000 + b"]" * 3000 + b"}",
        b"\xef\xbb\xbf" + _BASE,
        b" \t\r\n" + _BASE + b" \n",
        b"\x0c" + _BASE,  # form feed is not JSON whitespace
        _BASE + b"x",
        _BASE + _BASE,
        _BASE.replace(b":", b" : "),
        _BASE.decode().encode("utf-16"),
        _BASE.replace(b"Europe/Berlin", b"Europe/Bxrlin"),
        _BASE.replace(b'"tz":"Europe/Berlin"', b'"tz":null'),
        _BASE.replace(b"2026-03-02T12:00:00Z", b"2026-03-02 12:00:00Z"),
        _BASE.replace(b"2026-03-02T12:00:00Z", b"2026-03-02T12:00:00z"),
        _BASE.replace(b"2026-03-02T12:00:00Z", b"2026-03-02T12:00:00.1234567Z"),
        _BASE.replace(b"2026-03-02T12:00:00Z", b"2026-03-02T12:00:00+05:17:30"),
        _BASE.replace(b"2026-03-02T12:00:00Z", b"2026-03-02T12:00:00"),
        _BASE.replace(b"2026-03-02T12:00:00Z", b"2026-02-30T12:00:00Z"),
        _BASE.replace(b'"2026-03-02T12:00:00Z"', b"1772452800"),
        b"{}",
        b"[]",
        b'"x"',
        b"1",
        b"null",
    ],
)  # fmt: skip
def test_msgspec_leniencies_get_identical_answers(value: bytes) -> None:
    same(b"c1", value)


def test_the_gates_are_needed() -> None:
    """msgspec alone keeps the last of a repeated member and reads a 65-digit integer exactly,
    where the reference refuses the first and reads the second as infinity: without the fast
    path's checks these would be accepted differently. A lone surrogate escape it refuses by
    itself (the fast path relies on that: pinned here against a msgspec upgrade)."""
    dup = _BASE[:-1] + b',"customer_id":"c2"}'
    assert msgspec.json.decode(dup)["customer_id"] == "c2"
    assert isinstance(parse_json(dup), Rejection)
    assert fast_ingest.parse(dup) is None
    huge = _BASE[:-1] + b',"x":' + b"9" * 65 + b"}"
    assert msgspec.json.decode(huge)["x"] == int("9" * 65)
    assert fast_ingest.parse(huge) is None
    for lone in (b'"\\ud800"', b'"\\udc00"', b'"\\ud800\\u0041"', b'"\\ud800\\ud800"'):
        with pytest.raises(msgspec.DecodeError):
            msgspec.json.decode(lone)
        assert fast_ingest.parse(_BASE[:-1] + b',"x":' + lone + b"}") is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(EVENT_TYPES),
    edits=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=10_000),
            st.sampled_from(["delete", "insert", "replace", "splice"]),
            st.binary(min_size=1, max_size=3)
            | st.sampled_from([b'"', b"\\", b":", b",", b"{", b"}", b"[", b" ", b"0", b"\xff",
                               b'"type"', b'"x":1,', b'"event_id":"e",', b"\\u0041"]),
        ),
        min_size=1,
        max_size=4,
    ),
)  # fmt: skip
def test_mutated_events_get_identical_answers(kind: str, edits: list) -> None:
    value = bytearray(compact(event(kind, tz="Europe/Berlin")))
    for pos, op, chunk in edits:
        pos %= len(value) + 1
        if op == "delete":
            del value[pos : pos + len(chunk)]
        elif op == "insert":
            value[pos:pos] = chunk
        elif op == "replace":
            value[pos : pos + len(chunk)] = chunk
        else:  # splice a copy of a slice of the message itself (duplicates members)
            end = min(len(value), pos + 20 * len(chunk))
            value[pos:pos] = value[pos // 2 : end // 2 + 1]
    same(b"c1", bytes(value))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.none() | st.binary(max_size=10), value=st.binary(max_size=300))
def test_arbitrary_bytes_get_identical_answers(key: bytes | None, value: bytes) -> None:
    same(key, value)


def test_encode_of_the_emitter_is_what_the_fast_path_takes() -> None:
    """The emitter's wire encoding (compact, raw UTF-8) is the common case the fast path serves,
    and so are escapes (Python's ASCII-only json.dumps); a text with an escaped quote is
    declined (the quote count cannot vouch for it) and takes the reference path."""
    text = "Très bien,\n5 étoiles 👍"
    plain = encode(event("review", text=text))
    ascii_only = json.dumps(event("review", text=text)).encode()
    quoted = encode(event("review", text='He said "fine"'))
    assert fast_ingest.parse(plain) is not None
    assert fast_ingest.parse(ascii_only) is not None
    assert fast_ingest.parse(quoted) is None
    for value in (plain, ascii_only, quoted):
        out = same(b"c1", value)
        assert isinstance(out, EventBase), out
