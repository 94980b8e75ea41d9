"""Partition clocks (SPEC §2), and the one place the worker reads the wall clock.

A partition's clock only moves forward and never passes an event that has been written to one
of the partition's input topic-partitions but not yet read: it is at most the latest
`occurred_at` read from each input topic-partition that still holds unread messages. When none
does, live mode takes the wall clock minus a grace period; replay mode, which has no wall clock,
takes the replay's final instant. `partition_clock` is a pure function of what the shell has
observed, so these rules are tested without Kafka.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime


def wall_now() -> datetime:
    """The wall clock: read by the shell only, and passed into the core as data."""
    return datetime.now(UTC)


def wall_ms() -> int:
    """The wall clock in epoch milliseconds (the shell reads it once per batch)."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Progress:
    """What has been read of one input topic-partition in this session."""

    next_offset: int | None = None  # the offset after the last message read
    last_time: int | None = None  # occurred_at of the last accepted event read, epoch ms


#: A topic-partition nothing was read from (shared, read only: never stored).
_UNREAD = Progress()


@dataclass(slots=True)
class Replay:
    """A replay's declaration for one partition: where each of its inputs ends."""

    replay_id: str
    ends: dict[str, int] = field(default_factory=dict)  # topic -> end offset
    final: int | None = None  # the instant to move to once every input is read


def partition_clock(
    previous: int,
    progress: dict[str, Progress],
    *,
    highwaters: dict[str, int | None],
    wall_ms: int | None,
    grace_ms: int,
    replay: Replay | None = None,
) -> int:
    """The new clock of one partition; never less than `previous`.

    `progress` and `highwaters` are keyed by input topic. Live mode (`replay` None) needs
    `wall_ms`; a topic whose highwater is unknown (no fetch answered yet) holds the clock.
    """
    holding: list[int | None] = []
    if replay is not None:
        for topic, end in replay.ends.items():
            seen = progress.get(topic, _UNREAD)
            if end > 0 and (seen.next_offset or 0) < end:
                holding.append(seen.last_time)
        if not holding:
            candidates = [p.last_time for p in progress.values() if p.last_time is not None]
            done = replay.final if replay.final is not None else max(candidates, default=previous)
            return max(previous, done)
    else:
        for topic, highwater in highwaters.items():
            seen = progress.get(topic, _UNREAD)
            if highwater is None or (seen.next_offset or 0) < highwater:
                holding.append(seen.last_time)
        if not holding:
            assert wall_ms is not None, "live mode needs the wall clock"
            return max(previous, wall_ms - grace_ms)
    if any(t is None for t in holding):  # unread messages of a topic not read yet: wait
        return previous
    return max(previous, min(t for t in holding if t is not None))


def consumer_lag(highwater: int, position: int) -> int:
    """Messages between the next offset to process and the end of a topic-partition (never
    negative: a highwater fetched before the last records were processed can trail them)."""
    return max(highwater - position, 0)


# --- the time policy of a worker, chosen once ----------------------------------------------------


@dataclass(slots=True)
class PartitionTime:
    """One partition's clock and what it is computed from.

    Persisted by the engine once per batch (one small control record per partition), so a
    restarted or newly assigned worker resumes the clock where the last batch left it instead of
    recomputing it from a re-read suffix.
    """

    clock: int = 0
    progress: dict[str, Progress] = field(default_factory=dict)
    replay: Replay | None = None
    replay_done: bool = False
    # Customers erased since the committed input offsets: a digest of the customer id (never
    # the id) -> the input offsets folded into its state (short topic name -> offset), so a
    # record re-read after a crash cannot bring an erased customer back.
    erased: dict[str, dict[str, int]] = field(default_factory=dict)
    # Customers erased whose Redis profile Redis has not yet confirmed deleted: ids (Redis keys
    # are ids), kept only until the projector's write succeeds, so a deletion a stopped worker
    # never flushed is made again by whoever starts the partition next.
    unprojected: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (the control table value)."""
        extra: dict[str, object] = {"erased": self.erased} if self.erased else {}
        if self.unprojected:
            extra["unprojected"] = list(self.unprojected)
        return {
            "clock": self.clock,
            "progress": {t: [p.next_offset, p.last_time] for t, p in self.progress.items()},
            "replay": None
            if self.replay is None
            else {
                "replay_id": self.replay.replay_id,
                "ends": self.replay.ends,
                "final": self.replay.final,
            },
            "replay_done": self.replay_done,
            **extra,
        }

    @classmethod
    def from_json(cls, body: dict[str, object]) -> PartitionTime:
        """The inverse of `to_json` (a malformed value raises: the caller starts afresh)."""
        progress = {
            str(t): Progress(v[0], v[1])
            for t, v in dict(body.get("progress") or {}).items()  # type: ignore[call-overload]
        }
        raw = body.get("replay")
        replay = None
        if isinstance(raw, dict):
            replay = Replay(str(raw["replay_id"]), dict(raw["ends"]), raw.get("final"))
        erased = {
            str(d): {str(t): int(o) for t, o in dict(offs).items()}
            for d, offs in dict(body.get("erased") or {}).items()  # type: ignore[call-overload]
        }
        unprojected = [str(c) for c in list(body.get("unprojected") or [])]  # type: ignore[call-overload]
        return cls(int(body.get("clock") or 0), progress, replay, bool(body.get("replay_done")),  # type: ignore[call-overload]
                   erased, unprojected)  # fmt: skip


class Clock:
    """A time policy: how a partition's clock moves, and which wall clock decisions see.

    Chosen once per worker (`clock_for(mode)`), so no mode string is tested in the hot path.
    """

    name = "abstract"
    #: does the policy need the input topics' highwater marks (read once per batch)?
    uses_highwaters = True

    def advance(
        self, pt: PartitionTime, *, highwaters: dict[str, int | None], wall_ms: int | None
    ) -> int:
        """The partition's new clock (never lower than `pt.clock`)."""
        raise NotImplementedError

    def decision_wall(self, wall_ms: int | None) -> int | None:
        """The wall clock the lateness guardrail may read (None: no guardrail)."""
        return None


class LiveClock(Clock):
    """Live: caught-up partitions follow the wall clock minus a grace period."""

    name = "live"

    def __init__(self, grace_ms: int) -> None:
        self.grace_ms = grace_ms

    def advance(
        self, pt: PartitionTime, *, highwaters: dict[str, int | None], wall_ms: int | None
    ) -> int:
        return partition_clock(
            pt.clock, pt.progress, highwaters=highwaters, wall_ms=wall_ms, grace_ms=self.grace_ms
        )

    def decision_wall(self, wall_ms: int | None) -> int | None:
        return wall_ms


class FollowClock(Clock):
    """Follow: the latest event time read stands in for the wall clock (no guardrail)."""

    name = "follow"

    def advance(
        self, pt: PartitionTime, *, highwaters: dict[str, int | None], wall_ms: int | None
    ) -> int:
        now = max((p.last_time for p in pt.progress.values() if p.last_time), default=None)
        if now is None:
            return pt.clock
        return partition_clock(
            pt.clock, pt.progress, highwaters=highwaters, wall_ms=now, grace_ms=0
        )


class ReplayClock(Clock):
    """Replay: event time only; nothing moves before the replay's declaration."""

    name = "replay"
    uses_highwaters = False

    def advance(
        self, pt: PartitionTime, *, highwaters: dict[str, int | None], wall_ms: int | None
    ) -> int:
        if pt.replay is None:
            return pt.clock
        return partition_clock(
            pt.clock, pt.progress, highwaters={}, wall_ms=None, grace_ms=0, replay=pt.replay
        )


def clock_for(mode: str, *, grace_ms: int = 0) -> Clock:
    """The policy of a worker mode (`live`, `follow`, `replay`)."""
    if mode == "live":
        return LiveClock(grace_ms)
    if mode == "follow":
        return FollowClock()
    if mode == "replay":
        return ReplayClock()
    raise ValueError(f"unknown mode {mode!r}")
