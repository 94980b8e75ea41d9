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
offset that was not acknowledged; duplicates ignored). `next_commit` is that rule, pure;
`stream.adapter.faust_private.install_commit_rule` makes Faust's consumer use it (at_least_once).
"""

from __future__ import annotations

from collections.abc import Sequence


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
