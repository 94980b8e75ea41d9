"""When the worker lets CPython's cycle collector scan its whole heap: a schedule of its own.

CPython frees an object when its last reference goes; the cycle collector is only for garbage
that references itself. It scans young objects often (cheap), and every object it tracks (a
*full* collection) whenever the survivors of younger scans have grown by a quarter. A worker's
heap is mostly what its engines keep between batches: decoded customer states (about twenty
tracked objects each: the state, its lists, its timers), all alive, and freed by reference
counting when dropped. So a full collection finds nothing, and it holds the event loop for as
long as the scan takes, which grows with the states kept. Measured on a live worker at 8,500
events/s (`bench/throughput.py`, latency row): 23 full collections in 20 s, from 10 to 270 ms
each, none of which collected an object; they were the worst event-to-decision latencies (p99
411-422 ms with them, 96-105 ms with the collector off). Draining a backlog of 1,000 customers
they cost little (43 µs of CPU per event either way): the heap stays small there.

The schedule (`CycleCollector`):

* young collections keep Python's thresholds (each a few milliseconds at most);
* Python's own full collections are off (`install`);
* once partitions are started (recovery done, the tables loaded), everything alive is frozen
  (`freeze`: kept out of every later scan; it is the worker's long-lived setup);
* the worker runs a full collection itself when a fetch finds no input and a minute has passed
  since the last one (`idle`), or, under input that never pauses, once every
  `ENGAGE_GC_FULL_INTERVAL_S` (default 600 s; `busy`, checked after each batch), so garbage
  cycles that outlive the young scans are still reclaimed. Each is timed in
  `engage_gc_full_collection_seconds`.

`ENGAGE_GC_FULL_INTERVAL_S=0` leaves Python's own schedule in place (only the freeze stays).

Imports: gc, time (a shell module: it changes the process's collector).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

#: Seconds since the last full collection after which an idle worker runs one.
IDLE_AFTER_S = 60.0
#: A threshold the oldest generation's count never reaches: no automatic full collection.
NEVER = 2**31 - 1


class CycleCollector:
    """Full collections of the cycle collector at the worker's quiet moments, or rarely.

    `clock`, `collect` and `observe` are injectable so the schedule is tested without
    collecting; `observe(seconds, found)` receives each full collection's duration and the
    number of unreachable objects it found."""

    def __init__(
        self,
        *,
        interval_s: float,
        idle_after_s: float = IDLE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        collect: Callable[[int], int] = gc.collect,
        observe: Callable[[float, int], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.idle_after_s = min(idle_after_s, interval_s) if interval_s > 0 else idle_after_s
        self.clock = clock
        self.collect = collect
        self.observe = observe
        self.last = clock()  # the last full collection (or the start)
        self.full_collections = 0
        self.scheduled = False  # True once `install` has handed full collections to us

    def install(self) -> None:
        """Turn Python's automatic full collections off (young collections keep their
        thresholds) and run them on this schedule, unless it is disabled (interval 0). Only
        a worker process calls it: an app built in a test process leaves Python's alone."""
        if self.interval_s <= 0:
            return
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, NEVER)
        self.last = self.clock()
        self.scheduled = True

    def freeze(self) -> None:
        """Move everything alive now (Faust, the clients, the recovered tables and indexes)
        out of every later scan: it lives as long as the worker."""
        gc.freeze()

    def idle(self) -> None:
        """A fetch found no input: a good moment for a full collection, if one is due."""
        if self.scheduled and self.clock() - self.last >= self.idle_after_s:
            self._full()

    def busy(self) -> None:
        """After a batch: a full collection only once the longest interval has passed, so a
        worker whose input never pauses still reclaims garbage cycles."""
        if self.scheduled and self.clock() - self.last >= self.interval_s:
            self._full()

    def _full(self) -> None:
        started = time.perf_counter()
        found = self.collect(2)
        self.last = self.clock()
        self.full_collections += 1
        if self.observe is not None:
            self.observe(time.perf_counter() - started, found)
