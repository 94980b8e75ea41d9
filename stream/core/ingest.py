"""Turning one raw Kafka message into an event or a dead-letter reason (SPEC §1).

A pure function of (key bytes, value bytes, wall clock, limits, and where the message was read):
the worker hands in the wall clock it read and the message's partition, so the rules are
testable without Kafka and without sleeping.

`accept` is total: for any key and value bytes it returns an event or a `Rejection`, never
raises, so no message can stop a partition. The checks, in order:

1. no value (a tombstone) or an empty one: `malformed_json`; larger than the limit: `oversized`
   (before any parsing, so a 1 MB string or a deeply nested document costs nothing);
2. the bytes must be strict JSON text in UTF-8 (RFC 8259): invalid UTF-8, a byte order mark,
   `NaN`/`Infinity` literals, a lone surrogate escape, an object with the same key twice, or
   nesting deeper than the parser's limit are `malformed_json` (the common message, a flat
   object without escapes, is parsed by msgspec in `fast_ingest`, which declines everything
   else: the checks and their messages are `parse_json`'s);
3. the JSON must be an event of a known type (`unknown_type`) with valid fields
   (`schema_violation`, including numbers beyond a field's range and timestamps that cannot be
   represented in UTC);
4. the message key must be the `customer_id` (`key_mismatch`; a missing key says so);
5. when the worker says where the message was read, the key must hash (murmur2) to that
   partition (`wrong_partition`);
6. `occurred_at` no more than the allowed skew ahead of the wall clock (`future_timestamp`).

Anything unforeseen is `processing_error`, naming the exception class, never the payload.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from pydantic import ValidationError

from schemas.events import EVENT_ADAPTER, EventBase
from stream.core import fast_ingest
from stream.core.partitioning import expected_partition

Reason = Literal[
    "malformed_json",
    "schema_violation",
    "unknown_type",
    "key_mismatch",
    "future_timestamp",
    "oversized",
    "wrong_partition",
    "processing_error",
]
REASONS: tuple[Reason, ...] = get_args(Reason)
_MESSAGE_LIMIT = 200
#: Integers longer than this many digits are beyond every field's range: they are parsed as an
#: infinite float (a schema violation wherever a field reads them) instead of hitting Python's
#: int-from-string limit, and never cost quadratic conversion time.
_MAX_INT_DIGITS = 64


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message cannot be accepted; `message` never quotes the payload (personal data)."""

    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class Limits:
    """The size and clock-skew bounds of SPEC §1, read from the settings once."""

    max_message_bytes: int = 64 * 1024
    max_future_skew: timedelta = timedelta(minutes=5)


class _Malformed(ValueError):
    """Raised inside the JSON parser's hooks: the text is not strict JSON."""


def accept(
    key: bytes | None,
    value: bytes | None,
    wall_now: datetime,
    limits: Limits,
    *,
    partition: int | None = None,
    partitions: int | None = None,
    fast: bool = True,
) -> EventBase | Rejection:
    """Validate one message; returns the event or the reason it goes to the DLQ. Never raises.

    With `partition` (where the message was read) and `partitions` (the co-partitioned input
    topics' count), a message whose key hashes (murmur2) to another partition is rejected as
    `wrong_partition`: folding it here would split the customer's state across workers. The
    key is checked against `customer_id` first, so a null or different key is `key_mismatch`.

    The JSON is parsed by `fast_ingest.parse` (msgspec) when it can vouch for the message, by
    the reference `parse_json` otherwise; both give the same document, so the result is the
    same either way. `fast=False` always takes the reference (the differential tests and
    `bench/core.py --compare` use it).
    """
    try:
        return _accept(
            key, value, wall_now, limits, partition=partition, partitions=partitions, fast=fast
        )
    except Exception as exc:  # last resort: a message must never stop the partition
        return Rejection("processing_error", f"{type(exc).__name__} while validating the message")


def _accept(
    key: bytes | None,
    value: bytes | None,
    wall_now: datetime,
    limits: Limits,
    *,
    partition: int | None,
    partitions: int | None,
    fast: bool,
) -> EventBase | Rejection:
    if value is None:
        return Rejection("malformed_json", "empty message value (no value at all)")
    if len(value) == 0:
        return Rejection("malformed_json", "empty message value (zero bytes)")
    if len(value) > limits.max_message_bytes:
        return Rejection(
            "oversized", f"value is {len(value)} bytes, limit {limits.max_message_bytes}"
        )
    parsed = fast_ingest.parse(value) if fast else None
    if parsed is None:
        parsed = parse_json(value)
        if isinstance(parsed, Rejection):
            return parsed
    try:
        event: EventBase = EVENT_ADAPTER.validate_python(parsed)  # type: ignore[assignment]
    except ValidationError as exc:
        return _classify(exc)
    if key is None:
        return Rejection("key_mismatch", "message key is missing (it must be the customer_id)")
    if key != event.customer_id.encode("utf-8"):
        return Rejection("key_mismatch", "message key differs from customer_id")
    if partition is not None and partitions is not None:
        expected = expected_partition(key, partitions)
        if expected != partition:
            return Rejection(
                "wrong_partition",
                f"key hashes (murmur2) to partition {expected} of {partitions}, read from "
                f"{partition}: produce with the murmur2 partitioner",
            )
    if event.occurred_at - wall_now > limits.max_future_skew:
        ahead = (event.occurred_at - wall_now).total_seconds()
        return Rejection("future_timestamp", f"occurred_at is {ahead:.0f} s ahead of the clock")
    return event


def parse_json(value: bytes) -> Any | Rejection:
    """Strict RFC 8259 JSON in UTF-8, or the `malformed_json` rejection saying what is wrong.

    Python's parser is lenient where the SPEC is not (it takes NaN, lone surrogates, duplicate
    keys and UTF-16), so each leniency is closed here; nesting too deep for the parser is a
    malformed message too, never a RecursionError escaping to the worker.
    """
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("malformed_json", f"not valid UTF-8 at byte {exc.start}")
    if text.startswith("\ufeff"):
        return Rejection("malformed_json", "starts with a byte order mark")
    try:
        parsed = _DECODER.decode(text)
    except _Malformed as exc:
        return Rejection("malformed_json", str(exc))
    except RecursionError:
        return Rejection("malformed_json", "nested too deeply")
    except json.JSONDecodeError as exc:
        return Rejection("malformed_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}")
    if "\\u" in text and _has_lone_surrogate(parsed):
        return Rejection("malformed_json", "a string holds a lone UTF-16 surrogate escape")
    return parsed


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members, refusing a name that repeats (which value wins is undefined)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Malformed("an object has a duplicate key")
    return out


def _no_constants(name: str) -> Any:
    """NaN, Infinity and -Infinity are JavaScript, not JSON."""
    raise _Malformed(f"{name} is not a JSON value")


def _bounded_int(digits: str) -> int | float:
    """An integer, or infinity when it has more digits than any field accepts."""
    if len(digits.lstrip("-")) > _MAX_INT_DIGITS:
        return float("-inf") if digits.startswith("-") else float("inf")
    return int(digits)


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_constant=_no_constants, parse_int=_bounded_int
)


def _has_lone_surrogate(doc: Any) -> bool:
    """True when a string (or object key) cannot be encoded as UTF-8; iterative, any depth."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not _encodes(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _classify(exc: ValidationError) -> Rejection:
    """Map pydantic's error types to SPEC §1 reason codes, with a payload-free message."""
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    first = errors[0]
    kind = first["type"]
    if kind == "union_tag_invalid":
        return Rejection("unknown_type", "type is not one of the known event types")
    if kind == "union_tag_not_found":
        return Rejection("schema_violation", "type: field required")
    if kind in {"model_attributes_type", "model_type", "dict_type"}:
        return Rejection("schema_violation", "value is not a JSON object")
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err["loc"][1:]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    return Rejection("schema_violation", _short("; ".join(parts)))


def _short(text: str) -> str:
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"
