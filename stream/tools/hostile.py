"""Hostile messages, every kind the worker must dead-letter, each with its exact SPEC §1 reason.

The emitter's `--bad-fraction` mixes a few plausible mistakes into persona traffic; this module
is the attacker's toolbox instead: truncated and invalid-UTF-8 bytes, random bytes, duplicate
keys, NaN and Infinity, lone surrogates, a byte order mark, 100,000 nested arrays, 1 MB strings,
numbers with thousands of digits, timestamps that overflow when normalised to UTC, tombstones,
missing and foreign keys. Each message is built from a valid event (same customer, same topic),
so on Kafka it lands on that customer's partition among the valid traffic, and carries the
reason the ingest rules must give it: the unit tests, the hypothesis test and the chaos suite
(`bench/chaos.py`) all check the same list.

Pure: a seeded `random.Random` and the wall clock are passed in; nothing here touches Kafka.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from schemas.events import TOPIC_SUFFIX

#: SPEC §1 limit on a message value, as the worker's default settings enforce it.
MAX_MESSAGE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Hostile:
    """One hostile message: where it goes, its bytes, and the DLQ reason it must earn."""

    category: str
    topic_suffix: str  # input topic suffix, e.g. "clicks"
    key: bytes | None
    value: bytes | None
    reason: str


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _splice(event: dict[str, Any], member: str) -> bytes:
    """The event's JSON with one extra raw member text (e.g. a duplicate key) at the end."""
    return _dumps(event)[:-1] + b"," + member.encode("utf-8") + b"}"


def _nested(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


# --- categories: (event, rng, wall_now) -> (key override or ..., value, reason) -----------------

Build = Callable[[dict[str, Any], random.Random, datetime], tuple[Any, bytes | None, str]]
_SAME = object()  # keep the event's own key
CATEGORIES: dict[str, Build] = {}


def _category(name: str) -> Callable[[Build], Build]:
    def register(fn: Build) -> Build:
        CATEGORIES[name] = fn
        return fn

    return register


@_category("truncated_json")
def _truncated(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    raw = _dumps(ev)
    return _SAME, raw[: rng.randrange(1, len(raw) - 1)], "malformed_json"


@_category("invalid_utf8")
def _invalid_utf8(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    raw = _dumps({**ev, "session_id": "s-PLACEHOLDER"})
    bad = rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
    return _SAME, raw.replace(b"PLACEHOLDER", bad), "malformed_json"


@_category("random_bytes")
def _random_bytes(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    # The first byte can start neither JSON text nor UTF-8: the reason is certain.
    head = bytes([rng.choice([*range(0, 9), *range(0x80, 0x100)])])
    return _SAME, head + rng.randbytes(rng.randrange(0, 2048)), "malformed_json"


@_category("empty_value")
def _empty(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    return _SAME, b"", "malformed_json"


@_category("tombstone")
def _tombstone(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    return _SAME, None, "malformed_json"


@_category("duplicate_key")
def _duplicate_key(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    field = rng.choice(["customer_id", "event_id", "type", "occurred_at"])
    other = {"customer_id": "someone-else", "event_id": "ev-dup", "type": "click"}
    value = other.get(field, "2026-01-01T00:00:00Z")
    return _SAME, _splice(ev, f"{json.dumps(field)}:{json.dumps(value)}"), "malformed_json"


@_category("nan_literal")
def _nan(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    literal = rng.choice(["NaN", "Infinity", "-Infinity"])
    return _SAME, _splice(ev, f'"dwell_ms":{literal}'), "malformed_json"


@_category("lone_surrogate")
def _surrogate(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    return _SAME, _splice(ev, '"session_id":"s-\\ud800"'), "malformed_json"


@_category("byte_order_mark")
def _bom(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    return _SAME, b"\xef\xbb\xbf" + _dumps(ev), "malformed_json"


@_category("deep_nesting")
def _deep(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    depth = rng.randrange(5_000, 30_000)  # under 64 KiB, far deeper than any parser recurses
    if rng.random() < 0.5:
        return _SAME, _nested(depth), "malformed_json"
    return _SAME, _splice(ev, '"extra":' + _nested(depth).decode()), "malformed_json"


@_category("deep_nesting_100k")
def _deep_100k(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    return _SAME, _nested(100_000), "oversized"


@_category("string_1mb")
def _string_1mb(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    return _SAME, _dumps({**ev, "session_id": "x" * 1_000_000}), "oversized"


@_category("oversized")
def _oversized(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    pad = MAX_MESSAGE_BYTES + rng.randrange(1, 4096)
    return _SAME, _dumps({**ev, "padding": "p" * pad}), "oversized"


@_category("huge_number")
def _huge_number(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    digits = "9" * rng.randrange(20, 20_000)
    number = rng.choice([digits, "-" + digits, "1e400", "-1e400", f"{digits}.5"])
    field = {"click": "dwell_ms", "purchase": "items", "loyalty": "points"}.get(
        ev["type"], "schema_version"
    )
    body = {k: v for k, v in ev.items() if k != field}
    return _SAME, _splice(body, f'"{field}":{number}'), "schema_violation"


@_category("timestamp_overflow")
def _ts_overflow(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    when = rng.choice(
        ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+23:59"]
    )
    return _SAME, _dumps({**ev, "occurred_at": when}), "schema_violation"


@_category("timestamp_out_of_range")
def _ts_range(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    when = rng.choice(
        ["0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "0000-01-01T00:00:00Z",
         "2026-13-45T99:00:00Z", "2026-03-02T12:00:00", 1e300, -1]
    )  # fmt: skip
    return _SAME, _dumps({**ev, "occurred_at": when}), "schema_violation"


@_category("not_an_object")
def _not_object(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    value = rng.choice([b"[]", b"[1,2,3]", b'"click"', b"42", b"null", b"true", _dumps([ev])])
    return _SAME, value, "schema_violation"


@_category("schema_violation")
def _violation(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    broken = rng.choice(
        [
            {"type": "purchase", "order_id": "o", "amount": "-1", "currency": "EUR", "items": 1},
            {"type": "purchase", "order_id": "o", "amount": "NaN", "currency": "EUR", "items": 1},
            {"type": "review", "review_id": "r", "rating": 9, "channel": "site"},
            {"type": "survey", "survey": "nps", "score": 11},
            {"type": "click", "action": "hover"},
            {"type": "loyalty", "action": "tier_changed"},
            {"type": "click", "action": "page_view", "tz": "Mars/Olympus"},
            {"type": "click", "action": "page_view", "event_id": ""},
            {"type": "click", "action": "page_view", "customer_id": 42},
            # strict input: what the published schemas forbid and pydantic alone would take
            {"type": "purchase", "order_id": "o", "amount": "1E+5", "currency": "EUR", "items": 1},
            {"type": "purchase", "order_id": "o", "amount": 49.9, "currency": "EUR", "items": 1},
            {"type": "purchase", "order_id": "o", "amount": "1", "currency": "ZZZ", "items": "5"},
            {"type": "purchase", "order_id": "o\r\n", "amount": "1", "currency": "EUR", "items": 1},
            {"type": "click", "action": "page_view", "tz": "Europe"},
            {"type": "click", "action": "page_view", "event_id": "\u202egnp.exe"},
            {"type": "click", "action": "page_view", "occurred_at": 0},
        ]
    )
    # A field of the original event can complete a broken one (a loyalty event's own `tier`
    # makes a `tier_changed` valid): the broken event's type starts from the common fields only.
    common = {k: v for k, v in ev.items() if k in _COMMON_FIELDS}
    return _SAME, _dumps({**common, **broken}), "schema_violation"


_COMMON_FIELDS = {"event_id", "customer_id", "occurred_at", "tz", "schema_version"}


@_category("missing_type")
def _missing_type(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    return _SAME, _dumps({k: v for k, v in ev.items() if k != "type"}), "schema_violation"


@_category("unknown_type")
def _unknown_type(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    kind = rng.choice(["teleport", "CLICK", "", 7, None, ["click"], {"type": "click"}])
    return _SAME, _dumps({**ev, "type": kind}), "unknown_type"


@_category("key_mismatch")
def _key_mismatch(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    key = rng.choice([ev["customer_id"].encode() + b"-other", b"\xff\xfe", b""])
    return key, _dumps(ev), "key_mismatch"


@_category("null_key")
def _null_key(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    return None, _dumps(ev), "key_mismatch"


@_category("future_timestamp")
def _future(ev: dict[str, Any], rng: random.Random, now: datetime) -> tuple:
    ahead = now + timedelta(days=1, seconds=rng.randrange(0, 86_400 * 365))
    return _SAME, _dumps({**ev, "occurred_at": ahead.isoformat()}), "future_timestamp"


def make(category: str, event: dict[str, Any], rng: random.Random, wall_now: datetime) -> Hostile:
    """One hostile message of `category`, derived from the valid `event` (a dict)."""
    key, value, reason = CATEGORIES[category](event, rng, wall_now)
    if key is _SAME:
        key = str(event["customer_id"]).encode("utf-8")
    return Hostile(category, TOPIC_SUFFIX[event["type"]], key, value, reason)


#: Categories whose every message weighs hundreds of KiB or more: a run caps their number.
HEAVY = ("string_1mb", "deep_nesting_100k", "oversized")


def generate(
    n: int,
    events: list[dict[str, Any]],
    *,
    seed: int | str,
    wall_now: datetime,
    heavy_cap: int | None = None,
) -> Iterator[Hostile]:
    """n hostile messages, categories in turn (every one at least once when n allows), each
    derived from a valid event drawn from `events`. `heavy_cap` bounds how many of each HEAVY
    category are made (a 10,000-message run need not produce gigabytes); the others fill in."""
    rng = random.Random(f"engage-hostile/{seed}")
    made = dict.fromkeys(CATEGORIES, 0)
    names = list(CATEGORIES)
    i = 0
    for _ in range(n):
        while True:
            name = names[i % len(names)]
            i += 1
            if heavy_cap is None or name not in HEAVY or made[name] < heavy_cap:
                break
        made[name] += 1
        yield make(name, rng.choice(events), rng, wall_now)


def interleave(valid: list[Any], hostile: list[Any], *, seed: int | str) -> list[tuple[bool, Any]]:
    """Valid and hostile items in one seeded random order, each tagged (is_hostile, item);
    the valid items keep their own relative order (event time within a customer)."""
    rng = random.Random(f"engage-hostile-mix/{seed}")
    slots = [True] * len(hostile) + [False] * len(valid)
    rng.shuffle(slots)
    vi, hi = iter(valid), iter(hostile)
    return [(flag, next(hi) if flag else next(vi)) for flag in slots]
