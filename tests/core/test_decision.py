"""The typed decision record and its canonical bytes: the same as the dict records before it,
byte for byte (sorted keys, no spaces, `json.dumps`' escaping, `template` only when set)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.nudges import Decision as DecisionSchema
from stream.core.decision import Decision, decode_decision, encode_decision
from stream.core.vocabulary import Status

_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=8) | st.text(
    alphabet='abcXYZ09_-:.é\x00\x1f\x7f"\\/\u2028', max_size=8
)
_SCALAR = (
    _TEXT
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=True, allow_infinity=True)
)
_EXPLANATION = st.dictionaries(
    _TEXT,
    _SCALAR | st.lists(_SCALAR, max_size=3) | st.dictionaries(_TEXT, _SCALAR, max_size=3),
    max_size=6,
)
_DECISION = st.builds(
    Decision,
    nudge_id=_TEXT, ritual=_TEXT, rules_version=_TEXT, customer_id=_TEXT, anchor=_TEXT,
    due_at=_TEXT, decided_at=_TEXT, status=st.sampled_from(Status), reason=_TEXT,
    audience=_TEXT, category=_TEXT, promotional=st.booleans(), tz=_TEXT,
    explanation=_EXPLANATION, template=st.none() | _TEXT,
)  # fmt: skip


def as_record(d: Decision) -> dict[str, Any]:
    """The dict record earlier releases built and encoded (`rituals.decision_record`)."""
    record = {
        "nudge_id": d.nudge_id,
        "ritual": d.ritual,
        "rules_version": d.rules_version,
        "customer_id": d.customer_id,
        "anchor": d.anchor,
        "due_at": d.due_at,
        "decided_at": d.decided_at,
        "status": str(d.status),
        "reason": d.reason,
        "audience": d.audience,
        "category": d.category,
        "promotional": d.promotional,
        "tz": d.tz,
        "explanation": d.explanation,
    }
    if d.template is not None:
        record["template"] = d.template
    return record


@settings(max_examples=500, deadline=None)
@given(_DECISION)
def test_decision_bytes_are_those_of_the_dict_record(d: Decision) -> None:
    """The fast encoder never changes a decision's bytes: always json.dumps' canonical form of
    the dict record, whatever the text (non-ASCII, control characters, quotes) or values."""
    want = json.dumps(as_record(d), sort_keys=True, separators=(",", ":")).encode()
    assert encode_decision(d) == want
    assert d.to_dict() == as_record(d)


def test_the_published_examples_round_trip_byte_for_byte() -> None:
    """The JSON Schema's examples decode into a `Decision` and encode to their canonical bytes,
    with `template` only when set and the status a `Status`."""
    for example in DecisionSchema.model_json_schema()["examples"]:
        canonical = json.dumps(example, sort_keys=True, separators=(",", ":")).encode()
        d = decode_decision(canonical)
        assert d.status in Status and isinstance(d.status, Status)
        assert d.template is None and b"template" not in encode_decision(d)
        assert encode_decision(d) == canonical
        with_template = {**example, "template": "welcome_v2"}
        raw = json.dumps(with_template, sort_keys=True, separators=(",", ":")).encode()
        assert encode_decision(decode_decision(raw)) == raw
