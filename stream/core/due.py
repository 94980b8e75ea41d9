"""The due index: which customers of a partition have something due, and when.

In memory, rebuilt from the customers table after an assignment: a customer's timers and
queued events live in its own state (recovered from the changelog), so the index is a cache of
`next_due(state)` and costs no writes. A customer is registered at its earliest due instant; an
item that moves later (the inactivity timer moves with every event) keeps the earlier wake-up,
which re-registers the customer when it comes. So the work of a clock move grows with the items
due, not with the customers, and registering costs a heap push only when a due instant moves
earlier.
"""

from __future__ import annotations

import heapq


class DueIndex:
    """Customers by wake-up instant (epoch ms), with lazy deletion of superseded entries."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._wake: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._wake)

    def register(self, customer_id: str, due: int | None) -> None:
        """Make sure the customer wakes no later than `due` (None: nothing due)."""
        if due is None:
            return
        current = self._wake.get(customer_id)
        if current is not None and current <= due:
            return  # an earlier wake-up stands and will re-register the customer
        self._wake[customer_id] = due
        heapq.heappush(self._heap, (due, customer_id))

    def discard(self, customer_id: str) -> bool:
        """Forget the customer's wake-up (an erased customer); True when it had one. Its heap
        entry stays and is skipped when popped, like any superseded entry."""
        return self._wake.pop(customer_id, None) is not None

    def pop_due(self, clock: int, limit: int | None = None) -> list[str]:
        """The customers whose wake-up is at or before `clock` (at most `limit` of them, the
        earliest first), removed from the index; the rest stay due for a later call."""
        out: list[str] = []
        heap, wake = self._heap, self._wake
        while heap and heap[0][0] <= clock and (limit is None or len(out) < limit):
            due, cid = heapq.heappop(heap)
            if wake.get(cid) == due:
                del wake[cid]
                out.append(cid)
        return out

    def take(self, customer_id: str, clock: int) -> bool:
        """Remove the customer's wake-up when it is at or before `clock`; True when it was
        (the caller wakes the customer now). Its heap entry is skipped when popped."""
        due = self._wake.get(customer_id)
        if due is None or due > clock:
            return False
        del self._wake[customer_id]
        return True

    def next_wake(self) -> int | None:
        while self._heap and self._wake.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None
