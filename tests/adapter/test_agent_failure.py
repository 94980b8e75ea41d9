"""The one stop-on-failure path of the agent (`stream.adapter.agent.stop_on_failure`).

Whether a batch fails in the direct drain, in a partition start or in the stream's own loop,
the worker logs it, marks the shell failed (so /healthz answers 503) and never returns to
acknowledge the batch. Driven step by step on an event loop, no broker, no sleeps.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from stream.adapter.agent import stop_on_failure


def test_a_failure_is_logged_marks_the_shell_and_never_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shell: Any = SimpleNamespace(failure=None)
    boom = RuntimeError("broken batch")

    async def scenario() -> None:
        task = asyncio.create_task(stop_on_failure(shell, boom, "the batch shell failed"))
        for _ in range(100):  # let the task run until it has recorded the failure
            if shell.failure is not None:
                break
            await asyncio.sleep(0)
        assert shell.failure is boom
        assert not task.done()  # still holding the batch: never acknowledged
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.ERROR, logger="engage"):
        asyncio.run(scenario())
    [record] = [r for r in caplog.records if "the batch shell failed" in r.getMessage()]
    assert "stopping (see /healthz)" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is boom
