"""The worker's one agent, and what happens when the batch shell itself fails.

The agent (concurrency 1) hands batches to `BatchShell`: through the direct drain's hooks when
the consumer is a `DirectConsumer` (the stream then stays empty; it only makes Faust subscribe),
else from `take_events`. Whichever path fails, `stop_on_failure` does the same thing: log, mark
the shell failed (so /healthz answers 503 and an orchestrator restarts the worker), and never
return, so the batch is never acknowledged and no commit passes it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NoReturn

import faust

from stream.adapter.drain import DirectConsumer
from stream.adapter.shell import BatchShell
from stream.core.engine import Record
from stream.settings import Settings

log = logging.getLogger("engage")


async def stop_on_failure(shell: BatchShell, exc: Exception, what: str) -> NoReturn:
    """Stop processing after `exc`: logged, recorded as the shell's failure (/healthz fails),
    and the caller waits forever so the batch it held is never acknowledged."""
    log.error("%s: stopping (see /healthz)", what, exc_info=exc)
    shell.failure = exc
    await asyncio.Event().wait()  # never acknowledge this batch
    raise exc  # not reached: the wait ends only by cancellation


def add_agent(app: faust.App, settings: Settings, shell: BatchShell, inputs: Any) -> None:
    """Register the `ingest` agent on `inputs` (the topic of every co-partitioned input)."""

    async def direct(records: list[Record]) -> list[Record]:
        """The direct drain's batches to the engines (see `stream.adapter.drain`)."""
        try:
            return await shell.handle_records(records)
        except Exception as exc:
            await stop_on_failure(shell, exc, "the batch shell failed")

    async def prepare(partitions: set[int]) -> None:
        """The direct drain's start of newly assigned partitions (`BatchShell.prepare`)."""
        try:
            await shell.prepare(partitions)
        except Exception as exc:
            await stop_on_failure(shell, exc, "starting partitions failed")

    async def settle() -> list[Record]:
        """The direct drain found nothing to read (`BatchShell.idle`): returns the records
        to acknowledge (held back by write-behind until this write)."""
        try:
            return await shell.idle()
        except Exception as exc:
            await stop_on_failure(shell, exc, "the batch shell failed")

    @app.agent(inputs, name="ingest", concurrency=1)
    async def ingest(stream: faust.StreamT) -> None:
        """Batches to the engines. With the direct drain the consumer hands the batches over
        itself and this stream stays empty (it makes Faust subscribe to the topics)."""
        consumer = app.consumer
        if isinstance(consumer, DirectConsumer):
            consumer.direct_topics = frozenset(inputs.topics)
            consumer.direct_sink = direct
            consumer.direct_prepare = prepare
            consumer.direct_settle = settle
            consumer.direct_behind = shell.behind
        async for events in stream.take_events(
            settings.batch_max_events, within=settings.batch_within_s
        ):
            try:
                await shell.handle(events)
            except Exception as exc:
                await stop_on_failure(shell, exc, "the batch shell failed")
