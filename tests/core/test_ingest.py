"""SPEC §1 acceptance rules: every reason code, and what is accepted."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import EVENT_TYPES, EventBase
from stream.core.ingest import REASONS, Limits, Rejection, accept
from stream.tools.hostile import CATEGORIES, generate, make
from tests.factory import T0, event, raw

NOW = T0 + timedelta(days=1)
LIMITS = Limits()


def reason(key: bytes | None, value: bytes | None) -> str | None:
    out = accept(key, value, NOW, LIMITS)
    return out.reason if isinstance(out, Rejection) else None


@pytest.mark.parametrize(
    "kind", ["click", "purchase", "review", "support_contact", "survey", "loyalty", "consent"]
)
def test_every_type_is_accepted(kind: str) -> None:
    out = accept(b"c1", raw(event(kind)), NOW, LIMITS)
    assert not isinstance(out, Rejection), out
    assert out.type == kind


def test_occurred_at_is_normalised_to_utc() -> None:
    out = accept(b"c1", raw(event("click", occurred_at="2026-03-02T14:00:00+02:00")), NOW, LIMITS)
    assert out.occurred_at == T0
    assert out.occurred_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe\x00", "malformed_json"),
        (None, "malformed_json"),
        (b"[1, 2]", "schema_violation"),
        (b"{}", "schema_violation"),
        (raw({**event("click"), "type": "teleport"}), "unknown_type"),
        (raw(event("purchase", amount="-1")), "schema_violation"),
        (raw(event("purchase", currency="euro")), "schema_violation"),
        (raw(event("review", rating=9)), "schema_violation"),
        (raw(event("survey", survey="nps", score=11)), "schema_violation"),
        (raw(event("survey", survey="csat", score=0)), "schema_violation"),
        (raw(event("survey", survey="ces", score=7)), None),
        (raw(event("loyalty", action="tier_changed")), "schema_violation"),
        (raw(event("click", tz="Mars/Olympus")), "schema_violation"),
        (raw(event("click", occurred_at="2026-03-02T12:00:00")), "schema_violation"),
        (raw(event("click", customer_id="")), "schema_violation"),
        (raw(event("click", event_id="x" * 129)), "schema_violation"),
        (raw(event("click", dwell_ms=-5)), "schema_violation"),
        (raw(event("consent", scope="everything")), "schema_violation"),
        (raw(event("consent", status="maybe")), "schema_violation"),
        (raw(event("consent", source="carrier_pigeon")), "schema_violation"),
        (raw(event("consent", source=None)), None),
    ],
)
def test_reason_codes(value: bytes | None, expected: str | None) -> None:
    assert reason(b"c1", value) == expected


def test_key_mismatch_and_missing_key() -> None:
    assert reason(b"someone-else", raw(event("click"))) == "key_mismatch"
    assert reason(None, raw(event("click"))) == "key_mismatch"


def test_future_timestamp_bound_is_five_minutes() -> None:
    def ahead(seconds: int) -> bytes:
        moment = NOW + timedelta(seconds=seconds)
        return raw(event("click", occurred_at=moment.isoformat()))

    assert reason(b"c1", ahead(300)) is None
    assert reason(b"c1", ahead(301)) == "future_timestamp"


def test_oversized_is_checked_before_parsing() -> None:
    big = raw(event("review", text="x" * 70_000))
    assert len(big) > 64 * 1024
    assert reason(b"c1", big) == "oversized"
    assert reason(b"c1", b"{" * (64 * 1024 + 1)) == "oversized"


def test_messages_never_quote_the_payload() -> None:
    secret = "my-secret-address-street-42"
    out = accept(b"c1", raw(event("review", rating=0, text=secret)), NOW, LIMITS)
    assert isinstance(out, Rejection)
    assert secret not in out.message
    out = accept(b"c1", raw(event("purchase", currency=secret)), NOW, LIMITS)
    assert isinstance(out, Rejection)
    assert secret not in out.message


def test_wrong_partition_when_the_key_hashes_elsewhere() -> None:
    from stream.core.partitioning import expected_partition

    value = raw(event("click"))  # customer c1
    home = expected_partition(b"c1", 8)
    ok = accept(b"c1", value, NOW, LIMITS, partition=home, partitions=8)
    assert not isinstance(ok, Rejection)
    for p in set(range(8)) - {home}:
        out = accept(b"c1", value, NOW, LIMITS, partition=p, partitions=8)
        assert isinstance(out, Rejection) and out.reason == "wrong_partition"
        assert f"partition {home} of 8" in out.message and "c1" not in out.message
    # the key is checked against customer_id first: a null or other key is key_mismatch
    elsewhere = (home + 1) % 8
    for key in (None, b"someone-else"):
        out = accept(key, value, NOW, LIMITS, partition=elsewhere, partitions=8)
        assert isinstance(out, Rejection) and out.reason == "key_mismatch"
    # without the partition (files, replays of files) nothing is checked
    assert not isinstance(accept(b"c1", value, NOW, LIMITS), Rejection)


# --- hostile input: exact reasons, and accept() is total ------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected", "says"),
    [
        (b"c1", raw(event("click", occurred_at="0001-01-01T00:00:00+14:00")), "schema_violation",
         "1970..2999"),
        (b"c1", raw(event("click", occurred_at="9999-12-31T23:59:59-12:00")), "schema_violation",
         "1970..2999"),
        (b"c1", raw(event("click", occurred_at="1969-12-31T23:59:59Z")), "schema_violation",
         "1970"),
        (b"c1", raw(event("click"))[:-1] + b',"customer_id":"c2"}', "malformed_json",
         "duplicate key"),
        (b"c1", raw(event("click"))[:-1] + b',"event_id":"ev-x"}', "malformed_json",
         "duplicate key"),
        (None, raw(event("click")), "key_mismatch", "missing"),
        (b"c1", b"", "malformed_json", "empty"),
        (b"c1", None, "malformed_json", "empty"),
        (b"c1", raw(event("click"))[:-1] + b',"dwell_ms":NaN}', "malformed_json", "NaN"),
        (b"c1", raw(event("click"))[:-1] + b',"dwell_ms":-Infinity}', "malformed_json",
         "Infinity"),
        (b"c1", raw(event("click"))[:-1] + b',"dwell_ms":1e400}', "schema_violation", "dwell_ms"),
        (b"c1", raw(event("click"))[:-1] + b',"dwell_ms":' + b"9" * 5000 + b"}",
         "schema_violation", "dwell_ms"),
        (b"c1", raw(event("purchase", items=10**30)), "schema_violation", "items"),
        (b"c1", raw(event("loyalty", action="points_earned", points=10**12)), "schema_violation",
         "points"),
        (b"c1", b"[" * 30_000 + b"]" * 30_000, "malformed_json", "nested"),
        (b"c1", raw(event("click"))[:-1] + b',"x":' + b"[" * 20_000 + b"]" * 20_000 + b"}",
         "malformed_json", "nested"),
        (b"c1", b"[" * 100_000 + b"]" * 100_000, "oversized", "bytes"),
        (b"c1", raw(event("click", session_id="s" * 1_000_000)), "oversized", "bytes"),
        (b"c1", b"\xef\xbb\xbf" + raw(event("click")), "malformed_json", "byte order mark"),
        (b"c1", raw(event("click", session_id="\ud800")), "malformed_json", "surrogate"),
        (b"c1", raw(event("click")).replace(b"page_view", b"page_\xffview"), "malformed_json",
         "UTF-8"),
        (b"c1", raw(event("click")).decode().encode("utf-16"), "malformed_json", "UTF-8"),
    ],
)  # fmt: skip
def test_hostile_input_exact_reasons(
    key: bytes | None, value: bytes | None, expected: str, says: str
) -> None:
    out = accept(key, value, NOW, LIMITS)
    assert isinstance(out, Rejection), out
    assert (out.reason, says in out.message) == (expected, True), out


def test_every_hostile_category_earns_its_reason() -> None:
    samples = [event(k, customer=f"c{i}") for i, k in enumerate(EVENT_TYPES * 3)]
    seen: set[str] = set()
    for item in generate(len(CATEGORIES) * 20, samples, seed="unit", wall_now=NOW):
        out = accept(item.key, item.value, NOW, LIMITS)
        got = out.reason if isinstance(out, Rejection) else None
        assert got == item.reason, (item.category, out)
        seen.add(item.category)
    assert seen == set(CATEGORIES)


def test_an_unforeseen_failure_is_a_processing_error_naming_only_the_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stream.core.ingest as ingest

    def explode(_: object) -> None:
        raise KeyError("secret-payload-value")

    monkeypatch.setattr(ingest.EVENT_ADAPTER, "validate_python", explode)
    out = accept(b"c1", raw(event("click")), NOW, LIMITS)
    assert out == Rejection("processing_error", "KeyError while validating the message")


# --- hypothesis: accept() never raises; valid events are still accepted ----------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.sampled_from(
    ["event_id", "customer_id", "type", "occurred_at", "tz", "schema_version", "action", "amount",
     "currency", "items", "rating", "channel", "score", "survey", "points", "tier", "status",
     "complaint", "dwell_ms", "order_id", "review_id", "contact_id", "ticket_id"]
)  # fmt: skip


def _total(key: bytes | None, value: bytes | None) -> None:
    out = accept(key, value, NOW, LIMITS)
    assert isinstance(out, Rejection | EventBase)
    if isinstance(out, Rejection):
        assert out.reason in REASONS and out.reason != "processing_error", out
        assert len(out.message) <= 200


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.none() | st.binary(max_size=40), value=st.none() | st.binary(max_size=2000))
def test_accept_never_raises_on_arbitrary_bytes(key: bytes | None, value: bytes | None) -> None:
    _total(key, value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(EVENT_TYPES),
    changes=st.dictionaries(_fields, _json_values, max_size=4),
    drop=st.sets(_fields, max_size=3),
    tail=st.sampled_from(["", ',"type":"click"', ',"dwell_ms":NaN', ',"x":' + "[" * 3000]),
)
def test_accept_never_raises_on_hostile_json(
    kind: str, changes: dict, drop: set, tail: str
) -> None:
    doc = {k: v for k, v in {**event(kind), **changes}.items() if k not in drop}
    value = json.dumps(doc, allow_nan=True).encode()
    _total(b"c1", value)
    _total(b"c1", value[:-1] + tail.encode() + b"}")


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32), category=st.sampled_from(sorted(CATEGORIES)))
def test_generated_hostile_messages_earn_their_reason(seed: int, category: str) -> None:
    import random

    item = make(category, event(EVENT_TYPES[seed % len(EVENT_TYPES)]), random.Random(seed), NOW)
    out = accept(item.key, item.value, NOW, LIMITS)
    assert isinstance(out, Rejection) and out.reason == item.reason, (category, out)


def test_a_schema_violation_is_not_completed_by_the_original_events_fields() -> None:
    """A broken `tier_changed` built from a loyalty event that has a tier of its own was once a
    valid event (folded, never dead-lettered) in the chaos suite."""
    import random

    base = event("loyalty", action="joined", tier="bronze")
    for seed in range(200):
        item = make("schema_violation", base, random.Random(seed), NOW)
        out = accept(item.key, item.value, NOW, LIMITS)
        assert isinstance(out, Rejection) and out.reason == "schema_violation", (seed, out)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(EVENT_TYPES),
    customer=st.text(
        st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), min_size=1, max_size=128
    ).filter(lambda s: not s.isspace()),
    seconds=st.integers(min_value=0, max_value=86_400 * 365 * 50),
    offset_min=st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_valid_events_are_still_accepted(
    kind: str, customer: str, seconds: int, offset_min: int
) -> None:
    from datetime import UTC, datetime, timezone

    when = datetime(1970, 1, 2, tzinfo=UTC) + timedelta(seconds=seconds)
    local = when.astimezone(timezone(timedelta(minutes=offset_min)))
    wall = max(NOW, when)
    out = accept(
        customer.encode(), raw(event(kind, customer, occurred_at=local.isoformat())), wall, LIMITS
    )
    assert isinstance(out, EventBase), out
    assert (out.type, out.customer_id, out.occurred_at) == (kind, customer, when)
