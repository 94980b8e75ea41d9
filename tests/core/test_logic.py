"""The per-customer logic protocol: the engine drives any `CustomerLogic`, not only rituals.

`Echo` is a tiny logic of its own (one decision an hour after every event, kept as a timer):
the engine must call its three hooks (events, due instants, next due) and give it the same
guarantees it gives the rituals (batch-size independence, restarts, one decision per timer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import EventBase
from stream.core.clock import clock_for
from stream.core.decision import Decision, decode_decision
from stream.core.driver import MemoryDriver
from stream.core.engine import EngineConfig, Record
from stream.core.logic import CustomerLogic, Step
from stream.core.rituals import RITUAL_LOGIC, Context, RitualLogic, RitualState, Timer, _iso
from stream.core.rules import Rules
from stream.core.state import decode, to_ms
from stream.core.vocabulary import Status
from tests.factory import T0, event, raw

H = 3_600_000
TOPIC = "t.clicks"
RULES = Rules(version="echo-1")
START = to_ms(T0)
WALL = START + 86_400_000  # later than every event: none is "from the future"


def echo_record(customer_id: str, timer: Timer) -> Decision:
    """The decision `Echo` takes for a timer."""
    return Decision(
        nudge_id=hashlib.sha256(f"echo|{customer_id}|{timer.anchor}".encode()).hexdigest(),
        ritual="echo",
        rules_version=RULES.version,
        customer_id=customer_id,
        anchor=timer.anchor,
        due_at=_iso(timer.due_at),
        decided_at=_iso(timer.due),
        status=Status.DELIVERED,
        reason="eligible",
        audience="customer",
        category="care",
        promotional=False,
        tz="UTC",
        explanation={"source_event_id": timer.source},
    )


class Echo:
    """Answers every event one hour after it occurred. Records each hook call it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []  # (hook, customer, instant)

    def on_event(
        self, state: RitualState, customer_id: str, event: EventBase, at: int, clock: int,
        ctx: Context,
    ) -> Step:  # fmt: skip
        self.calls.append(("on_event", customer_id, at))
        timer = Timer(at + H, "echo", event.event_id, at + H, event.event_id)
        armed = msgspec.structs.replace(state, timers=[*state.timers, timer])
        return self._fire(armed, customer_id, clock, changed=True)

    def on_due(self, state: RitualState, customer_id: str, clock: int, ctx: Context) -> Step:
        self.calls.append(("on_due", customer_id, clock))
        return self._fire(state, customer_id, clock, changed=False)

    def next_due(self, state: RitualState) -> int | None:
        due = min((t.due for t in state.timers), default=None)
        self.calls.append(("next_due", "", -1 if due is None else due))
        return due

    def _fire(self, state: RitualState, customer_id: str, clock: int, *, changed: bool) -> Step:
        due = sorted((t for t in state.timers if t.due <= clock), key=lambda t: (t.due, t.anchor))
        if not due and not changed:
            return Step(state, [], [])  # the protocol: nothing due, the same state
        kept = [t for t in state.timers if t.due > clock]
        decisions = [echo_record(customer_id, t) for t in due]
        outcomes = [("echo", "treated", "decided", RULES.version) for _ in due]
        return Step(msgspec.structs.replace(state, timers=kept), decisions, outcomes)


def config(logic: CustomerLogic | None = None) -> EngineConfig:
    base = EngineConfig(RULES, clock_for("follow"), {TOPIC: "clicks"}, "t.clock")
    return base if logic is None else dataclasses.replace(base, logic=logic)


def clicks(times: list[tuple[str, int]]) -> list[Record]:
    """Click records on partition 0 (customer, minutes after T0), offsets in list order."""
    out = []
    for offset, (cid, minutes) in enumerate(times):
        evt = event("click", cid, days=minutes / 1440, event_id=f"e{offset}")
        out.append(Record(TOPIC, 0, offset, 0, cid.encode(), raw(evt)))
    return out


def decided(driver: MemoryDriver) -> dict[str, tuple[str, str]]:
    """source event id -> (customer, decided_at) of every echo decision sent."""
    out = {}
    for value in driver.decisions().values():
        d = decode_decision(value)
        out[d.explanation["source_event_id"]] = (d.customer_id, d.decided_at)
    return out


def test_the_ritual_logic_is_the_default_and_a_customer_logic() -> None:
    logic: CustomerLogic = RITUAL_LOGIC  # the type checker holds it to the protocol
    assert isinstance(logic, RitualLogic)
    assert config().logic is RITUAL_LOGIC


def test_a_plugged_in_logic_gets_events_due_instants_and_next_due() -> None:
    echo = Echo()
    driver = MemoryDriver(config(echo))
    # a's answer falls due at 1h; b's event at 2h moves the clock past it: the engine must
    # wake a through on_due (filed in the due index by next_due), not wait for a's next event.
    driver.pipe(clicks([("a", 0), ("b", 120)]), wall_ms=WALL)
    assert ("on_event", "a", START) in echo.calls
    assert ("on_event", "b", START + 2 * H) in echo.calls
    assert ("next_due", "", START + H) in echo.calls
    assert ("on_due", "a", START + 2 * H) in echo.calls
    assert decided(driver) == {"e0": ("a", _iso(START + H))}
    # a delivered decision goes to both topics, and into the customer's outbox until acked
    names = sorted(o.name for o in driver.sent)
    assert names == ["decisions", "nudges"]
    assert driver.counts[("decision", "echo", "delivered", "echo-1")] == 1
    assert driver.counts[("outcome", "echo", "treated", "decided", "echo-1")] == 1
    # b's answer (3h) is not due yet; a later event moves the clock there
    assert decode(driver.customers[b"b"]).r.timers[0].due == START + 3 * H
    driver.pipe(clicks([("a", 0), ("b", 120), ("c", 300)])[2:], wall_ms=WALL)
    assert decided(driver) == {
        "e0": ("a", _iso(START + H)),
        "e1": ("b", _iso(START + 3 * H)),
    }


def test_a_restart_wakes_the_plugged_in_logic_at_its_stored_due_instants() -> None:
    driver = MemoryDriver(config(Echo()))
    records = clicks([("a", 0), ("b", 30), ("c", 180)])
    driver.pipe(records[:2], wall_ms=WALL)
    driver.crash()  # the due index is rebuilt from the stored states, not from the logic
    driver.pipe(records[2:], wall_ms=WALL)
    assert set(decided(driver)) == {"e0", "e1"}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(min_value=0, max_value=600)),
        min_size=1,
        max_size=12,
    ),
    st.lists(st.integers(min_value=0, max_value=12), max_size=4),
)
def test_any_batching_answers_every_event_once_at_its_instant(
    times: list[tuple[str, int]], cuts: list[int]
) -> None:
    """Whatever the batches and the event order, each event gets exactly one decision, an hour
    after it, once a later event moves the clock past it."""
    records = clicks([*times, ("z", 720)])  # the last one moves the clock past every answer
    driver = MemoryDriver(config(Echo()))
    bounds = [0, *sorted({c for c in cuts if c < len(records)}), len(records)]
    for a, b in itertools.pairwise(bounds):
        if b > a:
            driver.pipe(records[a:b], wall_ms=WALL)
    want = {f"e{i}": (cid, _iso(START + m * 60_000 + H)) for i, (cid, m) in enumerate(times)}
    assert decided(driver) == want
