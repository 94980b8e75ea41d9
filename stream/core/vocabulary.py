"""The closed vocabularies every layer shares: decision statuses and logical output names.

They are `StrEnum`s, so a member is the string it names (`Status.DELIVERED == "delivered"`,
the same JSON and the same Prometheus label value), and a typo is an `AttributeError` at
import time instead of a silent mismatch in some comparison far away.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """What a ritual decision did with its nudge (the decision record's `status`)."""

    DELIVERED = "delivered"  # sent to the messaging systems
    HELD_OUT = "held_out"  # the holdout arm: decided, deliberately not sent (lift control)
    SUPPRESSED = "suppressed"  # a guardrail or consent said no
    EXPIRED = "expired"  # decided too late after its instant to still be relevant
    CANCELLED = "cancelled"  # a cancel rule matched before it was due


#: The statuses that count as a decision taken for the lift comparison (treated or held out).
TAKEN = frozenset({Status.DELIVERED, Status.HELD_OUT})


class OutputName(StrEnum):
    """The engine's logical outputs; the adapter maps each to a topic."""

    DECISIONS = "decisions"
    NUDGES = "nudges"
    DLQ = "dlq"
    REPLAY_STATUS = "replay_status"
    ERASURE_RECEIPTS = "erasure_receipts"
