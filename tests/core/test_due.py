"""The in-memory due index."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.core.due import DueIndex


def test_earlier_registration_wins_and_later_ones_wait_for_the_wake() -> None:
    index = DueIndex()
    index.register("a", 100)
    index.register("a", 300)  # later: the wake at 100 stands
    index.register("b", 50)
    index.register("b", 20)  # earlier: moves the wake
    index.register("c", None)
    assert index.pop_due(49) == ["b"]
    assert index.pop_due(99) == []
    assert index.pop_due(100) == ["a"]
    assert len(index) == 0 and index.next_wake() is None


@given(
    st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 1000)), max_size=60),
    st.integers(0, 1000),
)
def test_no_customer_wakes_later_than_its_earliest_due(regs: list, clock: int) -> None:
    index = DueIndex()
    earliest: dict[str, int] = {}
    for cid, due in regs:
        index.register(cid, due)
        earliest[cid] = min(due, earliest.get(cid, due))
    woken = index.pop_due(clock)
    assert sorted(woken) == sorted(c for c, d in earliest.items() if d <= clock)
    assert len(woken) == len(set(woken))
