"""The stored state's format: versioned, older formats upgraded, newer ones refused.

`tests/fixtures/customer-states-0.1.0.jsonl` holds states exactly as release 0.1.0 wrote them
(before states carried a version), `customer-states-format-2.jsonl` the same customers as
format 2 wrote them (inactivity rituals as eager timers), `customer-states-format-3.jsonl` as
the current format writes them (inactivity spells implicit, `r.idle`); every later release must
read them all to the same meaning.
The meaning is compared through public accessors (the profile, timers' ritual, anchor and due,
queued events, the outbox, consent, tickets, `next_due`), not every internal attribute, so a
layout change that keeps the meaning keeps this test green.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from stream.core.driver import MemoryDriver
from stream.core.engine import Record, by_partition
from stream.core.rituals import _materialize_ritual, next_due, timer_count, timers_of
from stream.core.state import (
    FORMAT_VERSION,
    UnsupportedStateFormat,
    decode,
    encode,
    format_version,
    peek,
    segments,
)
from tests.core.test_engine import INPUTS, PARTITIONS, config
from tests.factory import event, raw
from tests.fixtures.golden_states import RULES, describe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def golden(version: str) -> tuple[list[bytes], dict[str, dict]]:
    values = (FIXTURES / f"customer-states-{version}.jsonl").read_bytes().splitlines()
    expected = json.loads((FIXTURES / f"customer-states-{version}.expected.json").read_text())
    return values, expected


def newer(value: bytes) -> bytes:
    """A state as a release with the next format would write it."""
    current = encode(decode(value))
    prefix = b'{"v":%d,' % FORMAT_VERSION
    assert current.startswith(prefix)
    return b'{"v":%d,' % (FORMAT_VERSION + 1) + current[len(prefix) :]


#: fixture name -> the format its states were written in
GOLDEN = {"0.1.0": 1, "format-2": 2, "format-3": 3}


@pytest.mark.parametrize("name", GOLDEN)
def test_stored_states_of_every_known_format_read_to_the_same_meaning(name: str) -> None:
    values, expected = golden(name)
    assert len(values) == len(expected) == 5
    for value in values:
        assert format_version(value) == GOLDEN[name]
        state = decode(value)
        assert describe(state) == expected[state.customer_id], state.customer_id
        pk = peek(value)
        assert (pk.customer_id, pk.partition, pk.due) == (
            state.customer_id,
            state.partition,
            next_due(state.r),
        )
    # The fixture covers what a worker stores: timers (an anniversary, a deferred welcome),
    # queued events, unacknowledged decisions, consent, tickets.
    meanings = expected.values()
    assert {t[0] for m in meanings for t in m["timers"]} >= {
        "anniversary",
        "we_noticed",
        "post_purchase_welcome",
        "three_days_later",
    }
    assert all(any(m[k] for m in meanings) for k in ("pending", "outbox", "consent", "tickets"))
    # Every format holds the same customers, meaning the same.
    assert expected == golden("0.1.0")[1]


@pytest.mark.parametrize("name", GOLDEN)
def test_the_segment_gauges_count_a_segments_view_as_the_whole_state(name: str) -> None:
    """The segment refresh decodes only `Segments`: every format's states count into the
    same snapshot as the states decoded whole, at clocks that put them in different
    activity windows, stages and bands."""
    from stream.telemetry.kpis import snapshot

    values, _ = golden(name)
    whole = [decode(v) for v in values]
    views = [segments(v) for v in values]
    for state, view in zip(whole, views, strict=True):
        assert (view.first_seen, view.last_seen, view.money, view.signals) == (
            state.first_seen, state.last_seen, state.money, state.signals,
        )  # fmt: skip
    seen = sorted({s.last_seen for s in whole} | {s.first_seen for s in whole})
    day = 86_400_000
    for clock in (seen[0], seen[-1] + day, seen[-1] + 10 * day, seen[-1] + 60 * day):
        expected = snapshot(whole, clock, RULES.profile)
        assert expected.customers == 5
        assert snapshot(views, clock, RULES.profile) == expected
    with pytest.raises(UnsupportedStateFormat):
        segments(newer(values[0]))


def test_the_current_format_keeps_inactivity_spells_implicit() -> None:
    """Format 3 stores no `we_noticed` timer: the spell is `r.idle`, built as a timer only when
    due. Format 2 stored it as a timer, which reading keeps as it was."""
    values, _ = golden("format-3")
    states = [decode(v) for v in values]
    assert all(t.ritual != "we_noticed" for s in states for t in s.r.timers)
    assert any(s.r.idle and s.r.idle.waiting for s in states)
    old = [decode(v) for v in golden("format-2")[0]]
    assert any(t.ritual == "we_noticed" for s in old for t in s.r.timers)
    assert all(s.r.idle is None for s in old)


def test_a_spell_looked_for_by_name_becomes_the_timer_an_eager_arm_built() -> None:
    """Code about to scan a ritual's timers by name (a wait, a cancel rule) first turns its
    waiting spell into a timer: the very timer an inspection counts, nothing else moved."""
    spells = 0
    for value in golden("format-3")[0]:
        r = decode(value).r
        before, count = timers_of(r, RULES), timer_count(r)
        other = [t for t in before if t.ritual != "we_noticed"]
        _materialize_ritual(r, "we_noticed", RULES)
        assert r.idle is None or all(name != "we_noticed" for _, name in r.idle.waiting)
        assert sorted(r.timers, key=repr) == sorted(before, key=repr)  # the spell, as a timer
        assert timer_count(r) == count and timers_of(r, RULES) == r.timers
        spells += len(before) - len(other)
        _materialize_ritual(r, "we_noticed", RULES)  # nothing left to build
        assert timer_count(r) == count
    assert spells > 0


def test_format_2_is_read_wherever_its_version_key_is() -> None:
    value = golden("format-2")[0][0]
    assert value.startswith(b'{"v":2,')
    moved = b" {" + value[len(b'{"v":2,') : -1] + b',"v":2}'
    assert format_version(moved) == 2
    assert decode(moved) == decode(value)


@pytest.mark.parametrize("name", ["0.1.0", "format-2"])
def test_an_upgraded_state_is_written_in_the_current_format_with_the_same_meaning(
    name: str,
) -> None:
    values, expected = golden(name)
    for value in values:
        upgraded = encode(decode(value))
        assert upgraded.startswith(b'{"v":%d,' % FORMAT_VERSION)
        assert format_version(upgraded) == FORMAT_VERSION
        state = decode(upgraded)
        assert state == decode(value)
        assert describe(state) == expected[state.customer_id]
        assert peek(upgraded) == peek(value)


def test_the_version_is_read_wherever_the_key_is() -> None:
    value = golden("0.1.0")[0][0]
    assert format_version(b'{"v":1,' + value[1:]) == 1
    moved = b'{"customer_id":"x","v":%d}' % (FORMAT_VERSION + 1)
    assert format_version(b" " + moved) == FORMAT_VERSION + 1
    with pytest.raises(UnsupportedStateFormat):
        decode(b" " + moved)


def test_a_state_from_a_newer_release_is_refused_not_misread() -> None:
    values, _ = golden("0.1.0")
    future = newer(values[0])
    assert format_version(future) == FORMAT_VERSION + 1
    with pytest.raises(UnsupportedStateFormat, match="newer release"):
        decode(future)
    with pytest.raises(UnsupportedStateFormat):
        peek(future)
    stored = [(b"a", future), (b"b", values[1]), (b"c", b"{not a state")]
    slices, unreadable = by_partition(stored)
    assert unreadable == {"newer_format": 1, "malformed": 1}
    assert sum(len(s) for s in slices.values()) == 1


def test_an_event_for_a_customer_stored_by_a_newer_release_leaves_the_state_untouched() -> None:
    values, _ = golden("0.1.0")
    future = newer(values[0])
    cid = decode(values[0]).customer_id
    driver = MemoryDriver(config("replay"))
    driver.customers[cid.encode()] = future
    evt = event("click", cid, days=30)
    topic = next(t for t, short in INPUTS.items() if short == "clicks")
    record = Record(topic, zlib.crc32(cid.encode()) % PARTITIONS, 0, 0, cid.encode(), raw(evt))
    driver.pipe([record], wall_ms=0)
    assert driver.customers[cid.encode()] == future
    assert driver.counts[("dlq", "processing_error")] == 1
    (dead,) = [o for o in driver.sent if o.name == "dlq"]
    assert b"UnsupportedStateFormat" in dict(dead.headers)["engage.message"], dead.headers


def test_a_0_1_0_referral_invite_window_survives_the_upgrade() -> None:
    """Format 1 kept the referral invite's once-per instant in `referral_at`; rituals as data
    keep it per ritual in `windows`: a trigger within the window after an upgrade is still
    suppressed once_per_window."""
    from schemas.events import EVENT_ADAPTER
    from stream.core.rituals import Context, on_event
    from stream.core.rules import load_rules

    line = (FIXTURES / "customer-states-0.1.0.jsonl").read_bytes().splitlines()[0]
    old = json.loads(line)
    invited = 1_772_452_800_000  # 2026-03-02T12:00:00Z
    old["r"] = {**old.get("r", {}), "referral_at": invited, "open_tickets": []}
    state = decode(json.dumps(old, separators=(",", ":")).encode())
    assert state.r.windows == {"referral_invite": invited}
    cid = state.customer_id
    nps = EVENT_ADAPTER.validate_python(
        event("survey", cid, occurred_at="2026-04-01T12:00:00Z", survey="nps", score=10)
    )
    at = invited + 30 * 86_400_000
    step = on_event(state.r, cid, nps, at, at, Context(load_rules()))
    [d] = [d for d in step.decisions if d.ritual == "referral_invite"]
    assert (d.status, d.reason) == ("suppressed", "once_per_window")
    assert d.explanation["previous_invite_at"] == "2026-03-02T12:00:00.000Z"
