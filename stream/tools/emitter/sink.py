"""Where messages go: a JSON-lines file, or Kafka (and where nudges come back from).

These are thin shells around I/O; everything they carry is decided by the pure simulation.
Kafka settings are read from the same `ENGAGE_` variables as the worker (broker, namespace,
SASL/SSL), so one environment configures the whole stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from stream.core.partitioning import expected_partition
from stream.kafka_client import KafkaOptions
from stream.tools.emitter.reactions import Nudge
from stream.tools.emitter.wire import Message, topic
from stream.topic_names import nudges_topic


class FileSink:
    """One message value per line, exactly the bytes Kafka would get (no key: see faults)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._own = path != "-"
        self._out: IO[bytes] = open(path, "wb") if self._own else sys.stdout.buffer  # noqa: SIM115

    def write(self, msg: Message) -> None:
        self._out.write(msg.value)
        self._out.write(b"\n")

    def close(self) -> None:
        if self._own:
            self._out.close()
        else:
            self._out.flush()


async def _start_with_retry(client: Any, timeout_s: float) -> None:
    """Start an aiokafka client, waiting for a broker that is still coming up (compose)."""
    from aiokafka.errors import KafkaConnectionError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            await client.start()
            return
        except KafkaConnectionError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)


class MissingTopics(RuntimeError):
    """Topics the emitter needs do not exist (the worker or `engage topics` creates them)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"topics missing: {', '.join(names)} (run `engage topics` first)")
        self.names = names


@dataclass
class _Send:
    """One message on its way: retried until acknowledged or its deadline passes."""

    msg: Message
    on_ack: Callable[[], None] | None
    deadline: float
    attempts: int = 0


class KafkaSink:
    """aiokafka producer with acks=all and idempotence: a retried send is not a duplicate.

    It never lies about what reached Kafka: `acked` counts only sends the broker acknowledged,
    and each message's `on_ack` callback runs then, not when it was handed to the producer.
    A send that fails for a retriable reason (broker down, leader moving, timeout) is sent
    again, with backoff, until `send_timeout_s` after its first attempt; then it is counted in
    `unconfirmed` by cause. An unconfirmed message may still have reached Kafka (an
    acknowledgement lost with the connection), so the topics hold between `acked` and
    `acked + unconfirmed` of them; a re-send that did arrive twice has the same event_id, and
    the worker drops it as a duplicate.
    """

    #: Sends in flight before we wait for their acknowledgements (bounds memory on a slow broker).
    MAX_IN_FLIGHT = 5000
    RETRY_BACKOFF_S = (0.1, 5.0)

    def __init__(
        self, options: KafkaOptions, client_id: str = "engage-emit", send_timeout_s: float = 300.0
    ) -> None:
        self.options = options
        self.send_timeout_s = send_timeout_s
        self._producer_kwargs: dict[str, Any] = {
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            # a batch the broker has not acknowledged in this time fails and is re-sent here
            "request_timeout_ms": int(min(10.0, max(1.0, send_timeout_s)) * 1000),
            "max_request_size": 2 * 1024 * 1024,  # room for the deliberately oversized messages
            **options.client_kwargs(),
        }
        self._producer = self._new_producer()
        self._reset_needed = False
        self.producer_resets = 0
        self._pending: dict[asyncio.Future[Any], _Send] = {}
        self._retry: list[_Send] = []
        self.acked = 0
        self.resent = 0
        self.unconfirmed: Counter[str] = Counter()
        self._partitions: dict[str, int] = {}

    def _new_producer(self) -> Any:
        from aiokafka import AIOKafkaProducer

        return AIOKafkaProducer(**self._producer_kwargs)

    async def start(self, timeout_s: float = 60.0) -> None:
        from stream.kafka_client import check_access

        await check_access(self.options)  # wrong credentials: say so, do not retry for a minute
        await _start_with_retry(self._producer, timeout_s)

    async def _reset_producer(self) -> None:
        """A new producer (new producer id): after batches expired in an outage, the old one's
        sequence numbers no longer match the broker's, and every later send of it fails with
        OutOfOrderSequenceNumber. Called with nothing in flight."""
        old, self._producer = self._producer, self._new_producer()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.stop(), timeout=10)
        await _start_with_retry(self._producer, self.send_timeout_s)
        self._reset_needed = False
        self.producer_resets += 1

    async def wait_for_topics(self, names: list[str], timeout_s: float) -> dict[str, set[int]]:
        """Partitions of each topic, once all exist; raises MissingTopics after `timeout_s`.

        The emitter never creates topics: the worker (or `engage topics`) creates them with
        the configured partition count, and a broker that auto-creates them would pick its
        own count and break co-partitioning. In a compose stack the emitter may start first,
        so it waits instead of failing at once (a send to a missing topic would just hang).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            cluster = await self._producer.client.fetch_all_metadata()
            found = {n: cluster.partitions_for_topic(n) for n in names}
            missing = sorted(n for n, parts in found.items() if not parts)
            if not missing:
                self._partitions = {n: len(parts) for n, parts in found.items() if parts}
                return {n: set(parts) for n, parts in found.items() if parts}
            if loop.time() > deadline:
                raise MissingTopics(missing)
            await asyncio.sleep(1.0)

    async def send(self, msg: Message, on_ack: Callable[[], None] | None = None) -> None:
        """Hand one message to the producer; `on_ack` runs once Kafka acknowledged it."""
        loop = asyncio.get_running_loop()
        await self._submit(_Send(msg, on_ack, loop.time() + self.send_timeout_s))
        if self._retry or len(self._pending) >= self.MAX_IN_FLIGHT:
            await self.drain()

    async def _submit(self, item: _Send) -> None:
        from aiokafka.errors import KafkaError

        item.attempts += 1
        msg = item.msg
        name = topic(self.options.namespace, msg.type)
        try:
            partition = None
            if msg.reason == "wrong_partition":
                partition = await self._misroute(name, msg.key)
            future = await self._producer.send(
                name, value=msg.value, key=msg.key, partition=partition
            )
        except KafkaError as exc:  # no metadata, buffer full for too long: the broker is away
            self._failed(item, exc)
            return
        self._pending[future] = item
        future.add_done_callback(self._settled)

    def _settled(self, future: asyncio.Future[Any]) -> None:
        """Acknowledged: count it now (the progress and the summary see only acked sends)."""
        item = self._pending.pop(future, None)
        if item is None:
            return
        exc = TimeoutError() if future.cancelled() else future.exception()
        if exc is None:
            self.acked += 1
            if item.on_ack is not None:
                item.on_ack()
        else:
            self._failed(item, exc)

    def _failed(self, item: _Send, exc: BaseException) -> None:
        """Retry a retriable failure until the message's deadline; count it otherwise."""
        loop = asyncio.get_running_loop()
        if _breaks_idempotence(exc):
            self._reset_needed = True
        if (_retriable(exc) or _breaks_idempotence(exc)) and loop.time() < item.deadline:
            self._retry.append(item)
        else:
            self.unconfirmed[type(exc).__name__] += 1

    async def _misroute(self, name: str, key: bytes) -> int:
        """The partition after the key's murmur2 one: what a CRC32-partitioning client does
        to many keys (with a single partition there is no wrong one, and it is folded)."""
        count = self._partitions.get(name) or len(await self._producer.partitions_for(name))
        return (expected_partition(key, count) + 1) % count

    async def drain(self) -> None:
        """Wait until every message so far is acknowledged or given up on (retrying the
        retriable failures with backoff in between)."""
        backoff = self.RETRY_BACKOFF_S[0]
        while self._pending or self._retry:
            if self._pending:
                await asyncio.wait(list(self._pending))
                await asyncio.sleep(0)  # let the done-callbacks (_settled) run
            if self._retry:
                retry, self._retry = self._retry, []
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.RETRY_BACKOFF_S[1])
                if self._reset_needed:
                    await self._reset_producer()
                for item in retry:
                    self.resent += 1
                    await self._submit(item)
            else:
                backoff = self.RETRY_BACKOFF_S[0]

    async def stop(self, timeout_s: float | None = None) -> None:
        """Drain, then close. With `timeout_s` (an interrupted run), what is still unconfirmed
        by then is counted as `unconfirmed["interrupted"]` instead of waited for."""
        try:
            await asyncio.wait_for(self.drain(), timeout_s)
        except TimeoutError:
            left = len(self._pending) + len(self._retry)
            self._pending.clear()
            self._retry.clear()
            self.unconfirmed["interrupted"] += left
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), 10)


def _breaks_idempotence(exc: BaseException) -> bool:
    """The producer's sequence is out of step with the broker's: only a new producer helps."""
    from aiokafka.errors import OutOfOrderSequenceNumber, UnknownProducerId

    return isinstance(exc, OutOfOrderSequenceNumber | UnknownProducerId)


def _retriable(exc: BaseException) -> bool:
    """Broker unreachable, leadership moving, timeouts: worth sending again."""
    from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    if isinstance(exc, KafkaTimeoutError | KafkaConnectionError | TimeoutError):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


class NudgeListener:
    """Reads `{ns}.nudges` in the background into a queue of parsed nudges.

    No consumer group, partitions assigned by hand: every emitter sees every nudge, and reading
    starts at the end of the topic, so nudges of earlier runs are not taken for answers to this
    one.
    """

    def __init__(self, options: KafkaOptions) -> None:
        from aiokafka import AIOKafkaConsumer

        self.topic = nudges_topic(options.namespace)
        self.queue: asyncio.Queue[Nudge] = asyncio.Queue()
        self.invalid = 0
        self._reader = AIOKafkaConsumer(group_id=None, **options.client_kwargs())
        self._task: asyncio.Task[None] | None = None

    async def start(self, partitions: set[int], timeout_s: float = 60.0) -> None:
        from aiokafka import TopicPartition

        await _start_with_retry(self._reader, timeout_s)
        assignment = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._reader.assign(assignment)
        await self._reader.seek_to_end(*assignment)
        for tp in assignment:  # resolve the positions now, before anything is produced
            await self._reader.position(tp)
        self._task = asyncio.create_task(self._run(), name="nudge-listener")

    async def _run(self) -> None:
        import msgspec

        async for record in self._reader:
            try:
                nudge = Nudge.from_record(msgspec.json.decode(record.value or b""))
            except msgspec.DecodeError:
                nudge = None
            if nudge is None:
                self.invalid += 1
            else:
                self.queue.put_nowait(nudge)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._reader.stop()
