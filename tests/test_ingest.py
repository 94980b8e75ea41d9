"""SPEC §1 acceptance rules: every reason code, and what is accepted."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stream.core.ingest import Limits, Rejection, accept
from tests.factory import T0, event, raw

NOW = T0 + timedelta(days=1)
LIMITS = Limits()


def reason(key: bytes | None, value: bytes | None) -> str | None:
    out = accept(key, value, NOW, LIMITS)
    return out.reason if isinstance(out, Rejection) else None


@pytest.mark.parametrize(
    "kind", ["click", "purchase", "review", "support_contact", "survey", "loyalty"]
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
