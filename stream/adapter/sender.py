"""A batch's changelog writes and outputs, sent in order straight to the producer.

Faust's `send_soon` (a table write, `Topic.send_soon`) puts each message in the producer
buffer, a queue that one task drains through Faust's per-message publishing path (a future,
callbacks, sensors): about 100 µs a message on the development machine. A batch of the
engines queues one changelog write per changed customer plus its decisions and nudges, so at
a few thousand events a second that task fell behind and a decision waited about a second in
the queue before it reached the Kafka client (`make bench` measured it).

`Sender` keeps the same order and guarantees on a shorter path: the shell queues each message
(`queue`) while it applies a batch, then `await send()` hands all of them, in queue order, to
Faust's producer driver (`Producer.send`: the aiokafka producer underneath, its partitioner,
batching and linger) before the batch is acknowledged. Faust flushes that producer before
every offset commit, so at-least-once holds as before. A send that fails is logged and its
callback sees the failed future (a decision then stays in its customer's outbox, re-sent by
the next owner). Sends queued from outside a batch (an acknowledged decision clearing its
outbox) are sent by a task started for them, behind anything queued before them: one queue,
one order, so a customer's changelog records reach Kafka in the order they were written.

Imports: faust's producer through the app, asyncio (an adapter module).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("engage")

Callback = Callable[[Any], None]  # called with the send's future once it is done


class Sender:
    """Messages queued by the shell, sent in queue order to the app's producer."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._queue: list[tuple[str, bytes | None, bytes | None, int | None, Any, Any]] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Future[None] | None = None
        self.failed = 0  # sends that raised before reaching the client (logged)

    def queue(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        callback: Callback | None = None,
    ) -> None:
        """Queue one message (sent by the next `send`, in this order)."""
        self._queue.append((topic, key, value, partition, list(headers or ()) or None, callback))

    def send_later(self) -> None:
        """Send what is queued from a task: for queues filled outside a batch (callbacks)."""
        if self._queue and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self.send())

    async def send(self) -> None:
        """Hand every queued message to the producer, in order; returns once all are in the
        client's buffers (not once Kafka has them: the offset commit flushes for that)."""
        async with self._lock:
            while self._queue:
                batch, self._queue = self._queue, []
                producer = self.app.producer
                for topic, key, value, partition, headers, callback in batch:
                    try:
                        fut = await producer.send(topic, key, value, partition, None, headers)
                    except Exception as exc:
                        self.failed += 1
                        log.error("a send to %s failed: %s", topic, type(exc).__name__)
                        if callback is not None:
                            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                            failed.set_exception(exc)
                            callback(failed)
                        continue
                    if callback is not None:
                        fut.add_done_callback(callback)
