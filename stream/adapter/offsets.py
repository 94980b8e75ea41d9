"""Which input offset the worker may commit: Faust's bookkeeping, made safe for our topics.

Faust commits, per topic-partition, the end of the first run of consecutive acknowledged
offsets, and treats a jump in the offsets it reads as a "gap" (offsets of a compacted topic or
transaction markers that will never be delivered), merging the gap into the acknowledged list.
After a kill -9 and restart, or a rebalance, its fetcher can hand over a record ahead of the
committed offset before the ones in between; those are read and acknowledged a moment later.
Faust then holds each of them twice (as a gap and as an acknowledgement): its run detection
stops at every duplicate, so the committed offset advances by one offset per commit interval
(~0.4 messages/s, the backlog never drains), and a commit may pass offsets the gap covers before
they were processed (an event lost at the next crash).

The worker's acknowledged topics (inputs, clock, erasures) are plain append-only topics written
without transactions: they have no gaps. So no gap is recorded, and the offset committed is the
end of the run of acknowledged offsets that starts exactly at the committed offset (never past an
offset that was not acknowledged; duplicates ignored). `next_commit` is that rule, pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def next_commit(acked: Sequence[int], committed: int | None) -> tuple[int | None, list[int]]:
    """(the offset to commit or None, the acknowledged offsets to keep).

    `acked` are acknowledged offsets in any order, possibly repeated; `committed` the offset
    committed so far (the next one to read), None before any commit of this assignment.
    """
    pending = sorted({o for o in acked if committed is None or o >= committed})
    if not pending:
        return None, []
    start = pending[0] if committed is None else committed
    if pending[0] != start:
        return None, pending  # the next offset to commit is not acknowledged yet
    end = start
    for offset in pending:
        if offset != end:
            break
        end += 1
    return end, [o for o in pending if o >= end]


def _new_offset(self: Any, tp: Any) -> int | None:
    """`Consumer._new_offset` by `next_commit` (replaces Faust's, see the module docstring)."""
    acked = self._acked[tp]
    if not acked:
        return None
    offset, keep = next_commit(acked, self._committed_offset.get(tp))
    if offset is not None:
        index = self._acked_index[tp]
        index.intersection_update(keep)
    acked[:] = keep
    return offset


async def _no_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
    """`Consumer._add_gap`: our topics have no gaps; a jump is a record read ahead."""


def install() -> None:
    """Use these rules in every Faust consumer of this process (idempotent)."""
    from faust.transport.consumer import Consumer

    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    Consumer._add_gap = _no_gap  # type: ignore[method-assign]
