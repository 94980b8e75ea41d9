"""Partition clock rules (SPEC §2), as the pure function the worker calls."""

from __future__ import annotations

from stream.core.clock import Progress, Replay, current_highwaters, partition_clock

WALL = 1_000_000


def live(previous: int, progress: dict, highwaters: dict) -> int:
    return partition_clock(previous, progress, highwaters=highwaters, wall_ms=WALL, grace_ms=1000)


def test_caught_up_live_clock_is_wall_minus_grace() -> None:
    progress = {"a": Progress(5, 100), "b": Progress(3, 200)}
    assert live(0, progress, {"a": 5, "b": 3}) == WALL - 1000


def test_a_topic_with_unread_messages_holds_the_clock_at_its_latest_time() -> None:
    progress = {"a": Progress(5, 900), "b": Progress(3, 400)}
    assert live(0, progress, {"a": 5, "b": 9}) == 400  # b has unread messages
    assert live(0, progress, {"a": 8, "b": 9}) == 400  # both behind: the lower one
    assert live(0, {"a": Progress(5, 900)}, {"a": 5, "b": 2}) == 0  # b never read: wait


def test_the_clock_never_goes_back() -> None:
    progress = {"a": Progress(5, 400)}
    assert live(700, progress, {"a": 9}) == 700


def test_unknown_highwater_holds() -> None:
    assert live(10, {"a": Progress(5, 400)}, {"a": None}) == 400  # not the wall clock


def test_replay_ends_and_final_instant() -> None:
    replay = Replay("r1", {"a": 5, "b": 3}, final=5_000)

    def clock(progress: dict, previous: int = 0) -> int:
        return partition_clock(
            previous, progress, highwaters={}, wall_ms=None, grace_ms=0, replay=replay
        )

    assert clock({"a": Progress(2, 300), "b": Progress(1, 100)}) == 100
    assert clock({"a": Progress(5, 300), "b": Progress(1, 100)}) == 100  # a done: b holds
    assert clock({"a": Progress(5, 300), "b": Progress(3, 250)}) == 5_000  # all done: final
    no_final = Replay("r2", {"a": 5}, final=None)
    assert (
        partition_clock(
            0, {"a": Progress(5, 300)}, highwaters={}, wall_ms=None, grace_ms=0, replay=no_final
        )
        == 300
    )
    empty = Replay("r3", {"a": 0}, final=7)
    assert partition_clock(0, {}, highwaters={}, wall_ms=None, grace_ms=0, replay=empty) == 7



def test_a_highwater_fetched_before_records_read_holds_the_clock() -> None:
    # clicks-1's records were fetched at 1,200 while purchases-1, its records buffered then,
    # was last answered at 1,000: a purchase written between the two is not in its highwater.
    highwaters = {"purchases": 10, "clicks": 50, "reviews": 3}
    polled = {"purchases": 1_000, "clicks": 1_200, "reviews": 1_200}
    fetched = {"purchases": 1_000, "clicks": 1_200, "reviews": None}
    current = current_highwaters(highwaters, polled=polled, fetched=fetched)
    assert current == {"purchases": None, "clicks": 50, "reviews": 3}
    # read to that highwater, purchases-1 holds the clock at its last event until refetched
    progress = {
        "purchases": Progress(next_offset=10, last_time=5_000),
        "clicks": Progress(next_offset=50, last_time=9_000),
        "reviews": Progress(next_offset=3, last_time=8_000),
    }
    assert partition_clock(0, progress, highwaters=current, wall_ms=9_000, grace_ms=0) == 5_000
    assert partition_clock(0, progress, highwaters=highwaters, wall_ms=9_000, grace_ms=0) == 9_000
    # once a fetch answers for it, the ends are known again and the clock moves
    polled["purchases"] = 1_300
    current = current_highwaters(highwaters, polled=polled, fetched=fetched)
    assert current == highwaters
    assert partition_clock(0, progress, highwaters=current, wall_ms=9_000, grace_ms=0) == 9_000


def test_answers_at_different_instants_do_not_stop_the_clock() -> None:
    # inputs led by two brokers are answered at different instants; an input that never
    # had a record (no last event time: unknown, it would stop the clock) is current as
    # soon as its broker answered after the last records read were fetched
    highwaters = {"purchases": 0, "clicks": 50}
    fetched = {"purchases": None, "clicks": 1_200}
    for polled_purchases, expected in ((1_150, None), (1_210, 0)):
        polled = {"purchases": polled_purchases, "clicks": 1_400}
        assert current_highwaters(highwaters, polled=polled, fetched=fetched) == {
            "purchases": expected,
            "clicks": 50,
        }


def test_without_records_read_every_highwater_stands() -> None:
    assert current_highwaters(
        {"a": 4, "b": None}, polled={"a": None, "b": None}, fetched={"a": None, "b": None}
    ) == {"a": 4, "b": None}
