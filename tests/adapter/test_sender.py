"""The direct sender (`stream.adapter.sender`): order, failures and late sends, in-process with
a producer that records what it is given (the Kafka path is covered by the integration suite,
which runs every worker through it)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from stream.adapter.sender import Sender


class _Producer:
    """Faust's producer driver as the sender uses it: `send` returns the client's future."""

    def __init__(self, fail_on: set[bytes] | None = None) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None, Any]] = []
        self.fail_on = fail_on or set()
        self.futures: list[asyncio.Future[Any]] = []

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
        _timestamp: float | None, headers: Any,
    ) -> Any:  # fmt: skip
        await asyncio.sleep(0)  # the client may yield (metadata, a full buffer)
        if value in self.fail_on:
            raise RuntimeError("message too large")
        self.sent.append((topic, key, value, partition, headers))
        fut = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut


def test_messages_reach_the_producer_in_queue_order_with_their_partition_and_headers() -> None:
    async def run() -> list[Any]:
        producer = _Producer()
        sender = Sender(SimpleNamespace(producer=producer))
        sender.queue("changelog", key=b"c1", value=b"s1", partition=3)
        sender.queue("decisions", key=b"c1", value=b"d1", headers=[("h", b"v")])
        sender.queue("changelog", key=b"c1", value=None, partition=3)  # a tombstone
        await sender.send()
        return producer.sent

    assert asyncio.run(run()) == [
        ("changelog", b"c1", b"s1", 3, None),
        ("decisions", b"c1", b"d1", None, [("h", b"v")]),
        ("changelog", b"c1", None, 3, None),
    ]


def test_a_send_queued_by_a_callback_goes_after_everything_queued_before_it() -> None:
    """An acknowledged decision clears its outbox with a write queued from the send callback:
    it must reach Kafka after the batch's own writes of that customer, or a restart would read
    an older state last."""

    async def run() -> list[bytes | None]:
        producer = _Producer()
        sender = Sender(SimpleNamespace(producer=producer))

        def acknowledged(fut: Any) -> None:
            sender.queue("changelog", key=b"c1", value=b"ack", partition=0)
            sender.send_later()

        sender.queue("decisions", key=b"c1", value=b"d1", callback=acknowledged)
        await sender.send()
        producer.futures[0].set_result(SimpleNamespace(offset=7))  # Kafka acknowledges
        sender.queue("changelog", key=b"c1", value=b"batch2", partition=0)
        await asyncio.sleep(0)  # the callback runs, queues its write and starts a task
        batch = asyncio.ensure_future(sender.send())  # the next batch sends meanwhile
        await batch
        while sender._task is not None and not sender._task.done():
            await asyncio.sleep(0)
        return [value for _t, _k, value, _p, _h in producer.sent]

    sent = asyncio.run(run())
    assert sent == [b"d1", b"batch2", b"ack"]


def test_a_failed_send_reaches_its_callback_and_the_rest_are_sent() -> None:
    async def run() -> tuple[list[Any], list[BaseException | None], int]:
        producer = _Producer(fail_on={b"too-big"})
        sender = Sender(SimpleNamespace(producer=producer))
        seen: list[BaseException | None] = []
        sender.queue(
            "dlq", key=b"c1", value=b"too-big", callback=lambda f: seen.append(f.exception())
        )
        sender.queue("decisions", key=b"c2", value=b"d2")
        await sender.send()
        return producer.sent, seen, sender.failed

    sent, seen, failed = asyncio.run(run())
    assert [value for _t, _k, value, _p, _h in sent] == [b"d2"]
    assert len(seen) == 1 and isinstance(seen[0], RuntimeError) and failed == 1
