"""Deliberately bad messages, one kind per SPEC §1 dead-letter reason.

The processor must dead-letter these without losing or crashing anything, so the emitter mixes
them into otherwise good traffic. They are built from the good event they precede (same
customer, same topic, same simulated instant), and drawn from their own seeded generator: the
good traffic of a run is the same whatever `--bad-fraction` is.

In file mode (`--out`) only the reasons a JSON-lines file can carry are written:
`key_mismatch` needs a Kafka key that differs from the value (a file line has no key; a replay
derives it from `customer_id`), `wrong_partition` needs a partition other than the key's (the
Kafka sink picks it, since only it knows the partition count), and `future_timestamp` is
relative to the wall clock at produce time, which would make files differ between runs and
break the file's time order.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from stream.core.ingest import REASONS as INGEST_REASONS
from stream.tools.emitter.simulation import rfc3339_ms, to_ms, uuid_from_bits
from stream.tools.emitter.wire import Message, encode

#: `processing_error` names a failure of the worker itself: no message is built to cause it.
REASONS: tuple[str, ...] = tuple(r for r in INGEST_REASONS if r != "processing_error")
FILE_REASONS: tuple[str, ...] = ("malformed_json", "schema_violation", "unknown_type", "oversized")
#: SPEC §1 limit on a message value; oversized ones exceed it by a margin.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_FRACTION = 0.5
_COMMON = ("event_id", "customer_id", "type", "occurred_at", "tz", "schema_version")


class FaultMixer:
    """Decides before each good message how many bad ones precede it, and builds them."""

    def __init__(
        self,
        seed: int | str,
        fraction: float,
        *,
        file_mode: bool,
        wall_now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not 0 <= fraction <= MAX_FRACTION:
            raise ValueError(f"bad fraction must be within 0..{MAX_FRACTION}")
        self.fraction = fraction
        self.reasons = FILE_REASONS if file_mode else REASONS
        self._rng = random.Random(f"engage-emit/{seed}/faults")
        self._wall_now = wall_now

    def before(self, good: Message, event: dict[str, Any]) -> list[Message]:
        """The bad messages to send just before `good` (usually none).

        A geometric number of them, so that bad / (good + bad) tends to `fraction` and the
        reasons are equally frequent.
        """
        out: list[Message] = []
        if self.fraction <= 0:
            return out
        rng = self._rng
        while rng.random() < self.fraction:
            reason = self.reasons[rng.randrange(len(self.reasons))]
            out.append(self.make(reason, good, event))
        return out

    def make(self, reason: str, good: Message, event: dict[str, Any]) -> Message:
        """One bad message of `reason`, derived from a good event."""
        rng = self._rng
        fresh = {**event, "event_id": uuid_from_bits(rng.getrandbits(128))}
        key = good.key
        if reason == "malformed_json":
            raw = encode(fresh)
            if rng.random() < 0.5:
                value = raw[: rng.randrange(1, len(raw) - 1)]  # a cut-off message
            else:
                value = b"\xff\xfe" + raw[2:]  # not UTF-8, not JSON
        elif reason == "schema_violation":
            value = encode(self._violation(fresh))
        elif reason == "unknown_type":
            value = encode({k: fresh[k] for k in _COMMON if k in fresh} | {"type": "teleport"})
        elif reason == "key_mismatch":
            value = encode(fresh)
            key = good.key + b"-other"
        elif reason == "wrong_partition":
            value = encode(fresh)  # a good event: the sink sends it to a partition not its key's
        elif reason == "future_timestamp":
            ahead = self._wall_now() + timedelta(hours=1, minutes=rng.randrange(0, 60))
            value = encode({**fresh, "occurred_at": rfc3339_ms(to_ms(ahead))})
        elif reason == "oversized":
            common = {k: fresh[k] for k in _COMMON if k in fresh}
            text = "synthetic filler text " * (MAX_MESSAGE_BYTES // 22 + 64)
            value = encode(common | {"type": "review", "review_id": "rev-oversized",
                                     "rating": 3, "channel": "site", "text": text})  # fmt: skip
        else:
            raise ValueError(f"unknown reason {reason!r}")
        return Message(good.at_ms, good.type, key, value, reason)

    def _violation(self, fresh: dict[str, Any]) -> dict[str, Any]:
        """A well-formed JSON event that breaks one SPEC §1 rule."""
        common = {k: fresh[k] for k in _COMMON if k in fresh}
        variant = self._rng.randrange(5)
        if variant == 0:
            return common | {"type": "purchase", "order_id": "ord-bad", "amount": "-12.50",
                             "currency": "EUR", "items": 1}  # fmt: skip
        if variant == 1:
            return common | {"type": "review", "review_id": "rev-bad", "rating": 9,
                             "channel": "site"}  # fmt: skip
        if variant == 2:
            return common | {"type": "survey", "survey": "nps", "score": 11}
        if variant == 3:
            return common | {"type": "click", "action": "hover"}
        naive = str(common["occurred_at"]).removesuffix("Z")  # no offset
        return {**fresh, "occurred_at": naive}
