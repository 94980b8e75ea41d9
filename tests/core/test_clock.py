"""Partition clock rules (SPEC §2), as the pure function the worker calls."""

from __future__ import annotations

from stream.core.clock import Progress, Replay, partition_clock

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


