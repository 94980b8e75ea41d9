"""The per-customer logic protocol: the three hooks the partition engine drives, per customer.

The engine owns everything around a customer's decisions: offsets, redelivery, validation, the
fold into the profile, the partition clock, the due index, the outbox and the sends. What a
customer's events and due instants *mean* is the logic's: the engine only ever calls

* `on_event`, when an accepted event of the customer has been folded;
* `on_due`, when the partition clock has reached the customer's next due instant;
* `next_due`, to file the customer in the due index after either.

The data-driven ritual evaluator (`stream.core.rituals.RitualLogic`, the rituals and guardrails
of the rules file) is the logic every worker runs; a test, a benchmark or another product can
plug in its own through `EngineConfig.logic`, and the engine's guarantees (idempotent folding,
no decision lost, a failing record dead-lettered, the same result whatever the batching) hold
for it unchanged.

The shape follows Bytewax's `StatefulLogic` (`on_item`, `on_notify`, `notify_at`), with engage's
own constraints spelled out in `CustomerLogic`'s docstring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from schemas.events import EventBase
    from stream.core.decision import Decision
    from stream.core.rituals import Context, RitualState

#: An outcome seen for the lift KPIs: (ritual, arm, outcome, rules version of the decision).
Outcome = tuple[str, str, str, str]


class Step(NamedTuple):
    """What a hook returns: the customer's new logic state, the decisions taken (in the order
    they were taken) and the outcomes seen."""

    state: RitualState
    decisions: list[Decision]
    outcomes: list[Outcome]


class CustomerLogic(Protocol):
    """Per-customer decision logic, driven by the partition engine.

    A logic keeps its per-customer state in the `RitualState` stored with the customer (the
    engine encodes it with the rest of the customer, once per batch). Its hooks must be pure:

    * never mutate the state given: return a new one (a hook that raises leaves the customer
      exactly as before the record, which is dead-lettered);
    * return the *same* state object when nothing was due (the engine then only re-files the
      customer in the due index, without writing it);
    * read no clock: `clock` is the partition's, and `ctx.wall_ms` the only wall clock a
      decision may see (live mode only);
    * keep every instant it wants to be woken at as a timer or a queued event of the state:
      a restart rebuilds the due index from the stored bytes (`stream.core.state.peek`, the
      earliest timer or queued event) without calling the logic, so `next_due` must agree.
    """

    def on_event(
        self,
        state: RitualState,
        customer_id: str,
        event: EventBase,
        at: int,
        clock: int,
        ctx: Context,
    ) -> Step:
        """An accepted event of the customer, occurred at `at` (epoch ms), read when the
        partition clock stands at `clock`: take it into account and decide what is due."""
        ...

    def on_due(self, state: RitualState, customer_id: str, clock: int, ctx: Context) -> Step:
        """The partition clock has reached `clock`: decide whatever is due by then."""
        ...

    def next_due(self, state: RitualState) -> int | None:
        """The earliest instant the customer has something to decide, if any."""
        ...
