"""The order in which a fetch's records reach the engines: interleaved by record time.

A Kafka fetch returns each topic-partition's records as one run (all of `clicks`[0], then all
of `purchases`[0], ...). The partition clock never passes a record written to an input
topic-partition and not yet read (SPEC §2), so while one topic's run is read, the others hold
the clock at the last time read from them; and at the end of the batch, once every input is
read to its end, the clock falls back to the wall clock minus the grace period. An event read
in a run ahead of the others' runs is then ahead of the clock, and its ritual effect (a welcome
decision) waits for the *next* fetch to move the clock past it: a whole batch cycle of latency.
Interleaving the runs by record time reads each partition's topics side by side, so the clock
moves past an event as soon as a later record of every other input with unread records is read,
most often within the same batch.

Any interleaving is a valid read order: each topic-partition keeps its offset order, and the
engine's decisions never depend on which input was read first beyond what the clock allows.
This only picks, among the valid orders, the one that lets the clock advance soonest.

Pure: no I/O, no clock reads.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from operator import attrgetter

from stream.core.engine import Record

_TIME = attrgetter("timestamp_ms")


def in_time_order(records: Sequence[Record]) -> list[Record]:
    """`records` interleaved by record time (`timestamp_ms`), each topic-partition's records
    kept in their order; records of equal time keep their order in `records`, so an input
    already in time order is returned unchanged. A topic-partition whose times go backwards
    (producers with skewed clocks) still keeps its offset order: its records are merged as a
    run, never sorted."""
    if len(records) < 2:
        return list(records)
    last: dict[tuple[str, int], int] = {}  # each topic-partition's latest time so far
    ordered = monotonic = True
    previous = records[0].timestamp_ms
    for rec in records:
        t = rec.timestamp_ms
        ordered = ordered and t >= previous  # in time order so far (then every run is too)
        previous = t
        tp = (rec.topic, rec.partition)
        if t < last.get(tp, t):
            monotonic = False
            break
        last[tp] = t
    if ordered:
        return list(records)
    if monotonic:  # a stable sort keeps each run's order (its times never go down)
        return sorted(records, key=_TIME)
    runs: dict[tuple[str, int], list[tuple[int, int, Record]]] = {}
    for i, rec in enumerate(records):
        runs.setdefault((rec.topic, rec.partition), []).append((rec.timestamp_ms, i, rec))
    return [rec for _, _, rec in heapq.merge(*runs.values(), key=lambda item: item[:2])]
