"""Turning one raw Kafka message into an event or a dead-letter reason (SPEC §1).

A pure function of (key bytes, value bytes, wall clock, limits): the worker hands in the wall
clock it read, so the rules are testable without Kafka and without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from pydantic import ValidationError

from schemas.events import EVENT_ADAPTER, EventBase

Reason = Literal[
    "malformed_json",
    "schema_violation",
    "unknown_type",
    "key_mismatch",
    "future_timestamp",
    "oversized",
    "processing_error",
]
REASONS: tuple[Reason, ...] = get_args(Reason)
_MESSAGE_LIMIT = 200


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message cannot be accepted; `message` never quotes the payload (personal data)."""

    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = 64 * 1024
    max_future_skew: timedelta = timedelta(minutes=5)


def accept(
    key: bytes | None, value: bytes | None, wall_now: datetime, limits: Limits
) -> EventBase | Rejection:
    """Validate one message; returns the event or the reason it goes to the DLQ."""
    if value is None:
        return Rejection("malformed_json", "empty message value")
    if len(value) > limits.max_message_bytes:
        return Rejection(
            "oversized", f"value is {len(value)} bytes, limit {limits.max_message_bytes}"
        )
    try:
        event: EventBase = EVENT_ADAPTER.validate_json(value)  # type: ignore[assignment]
    except ValidationError as exc:
        return _classify(exc)
    if key is None or key != event.customer_id.encode("utf-8"):
        return Rejection("key_mismatch", "message key differs from customer_id")
    if event.occurred_at - wall_now > limits.max_future_skew:
        ahead = (event.occurred_at - wall_now).total_seconds()
        return Rejection("future_timestamp", f"occurred_at is {ahead:.0f} s ahead of the clock")
    return event


def _classify(exc: ValidationError) -> Rejection:
    """Map pydantic's error types to SPEC §1 reason codes, with a payload-free message."""
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0]
    kind = first["type"]
    if kind in {"json_invalid", "json_type"}:
        return Rejection("malformed_json", _short(first["msg"]))
    if kind == "union_tag_invalid":
        return Rejection("unknown_type", "type is not one of the known event types")
    if kind == "union_tag_not_found":
        return Rejection("schema_violation", "type: field required")
    if kind == "model_attributes_type":
        return Rejection("schema_violation", "value is not a JSON object")
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err["loc"][1:]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    return Rejection("schema_violation", _short("; ".join(parts)))


def _short(text: str) -> str:
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"
