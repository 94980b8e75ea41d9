"""Partition clocks (SPEC §2), and the one place the worker reads the wall clock.

A partition's clock only moves forward and never passes an event that has been written to one
of the partition's input topic-partitions but not yet read: it is at most the latest
`occurred_at` read from each input topic-partition that still holds unread messages. When none
does, live mode takes the wall clock minus a grace period; replay mode, which has no wall clock,
takes the replay's final instant. `partition_clock` is a pure function of what the shell has
observed, so these rules are tested without Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime


def wall_now() -> datetime:
    """The wall clock: read by the shell only, and passed into the core as data."""
    return datetime.now(UTC)


@dataclass(slots=True)
class Progress:
    """What has been read of one input topic-partition in this session."""

    next_offset: int | None = None  # the offset after the last message read
    last_time: int | None = None  # occurred_at of the last accepted event read, epoch ms


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
            seen = progress.get(topic, Progress())
            if end > 0 and (seen.next_offset or 0) < end:
                holding.append(seen.last_time)
        if not holding:
            candidates = [p.last_time for p in progress.values() if p.last_time is not None]
            done = replay.final if replay.final is not None else max(candidates, default=previous)
            return max(previous, done)
    else:
        for topic, highwater in highwaters.items():
            seen = progress.get(topic, Progress())
            if highwater is None or (seen.next_offset or 0) < highwater:
                holding.append(seen.last_time)
        if not holding:
            assert wall_ms is not None, "live mode needs the wall clock"
            return max(previous, wall_ms - grace_ms)
    if any(t is None for t in holding):  # unread messages of a topic not read yet: wait
        return previous
    return max(previous, min(t for t in holding if t is not None))
