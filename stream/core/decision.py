"""A decision record, typed, and its canonical bytes.

Every ritual decision the engine takes is one `Decision`: it goes to the customer's outbox, the
decisions topic (and the nudges topic when delivered), the audit trail and the backtest. Its
bytes are canonical: sorted keys, no spaces, non-ASCII and control characters escaped the way
`json.dumps` escapes them, so the same decision is the same bytes on any machine and a replay
is byte-identical to the first run. The published JSON Schema of the record is
`schemas.nudges.Decision`; this struct is the core's fast, typed twin of it.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from stream.core.vocabulary import Status


class Decision(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One ritual decision. Only `template` has a default, so only it is left out of the bytes
    (when the ritual names none): every other field is always written."""

    nudge_id: str  # lowercase hex SHA-256 of ritual|customer_id|anchor
    ritual: str
    rules_version: str
    customer_id: str
    anchor: str
    due_at: str  # RFC 3339 UTC with milliseconds
    decided_at: str
    status: Status
    reason: str
    audience: str
    category: str
    promotional: bool
    tz: str
    explanation: dict[str, Any]  # the exact values and event ids behind it; no free text
    template: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict, fields in declaration order, `template` only when set
        (the explanation is the same object, not a copy)."""
        out = {f: getattr(self, f) for f in self.__struct_fields__}
        if self.template is None:
            del out["template"]
        return out


_SORTED = msgspec.json.Encoder(order="sorted")
_DECODER = msgspec.json.Decoder(Decision)
_PLAIN = (str, int, bool, type(None))


def encode_decision(decision: Decision) -> bytes:
    """Canonical bytes: those of `json.dumps(record, sort_keys=True, separators=(",", ":"))`
    of the record as a dict (`Decision.to_dict`).

    msgspec writes them several times faster where the two agree by construction: an
    explanation whose values are strings, integers, booleans and nulls, and output that is
    printable ASCII with no escape at all (the other fields are strings and a boolean). Anything
    else (a float, a nested value, a non-ASCII or escaped character anywhere) takes
    `json.dumps`, whose escaping is the one every earlier release wrote.
    """
    if all(type(v) in _PLAIN for v in decision.explanation.values()):
        out = _SORTED.encode(decision)
        if out.isascii() and b"\\" not in out and b"\x7f" not in out:
            return out
    return json.dumps(decision.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def decode_decision(raw: bytes) -> Decision:
    """A decision from its bytes (an outbox entry re-sent after a restart)."""
    return _DECODER.decode(raw)
