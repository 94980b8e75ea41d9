"""The I/O half of the emitter client: an aiokafka producer that puts each event where the
worker expects it and counts only what Kafka acknowledged."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pydantic import BaseModel

from stream.client.envelope import DEFAULT_SOURCE, Envelope, InvalidEvent, envelope
from stream.core.partitioning import expected_partition
from stream.kafka_client import KafkaOptions


@dataclass
class SendReport:
    """What a batch of sends did: acknowledged, refused before sending, failed in Kafka."""

    acked: int = 0
    invalid: Counter[str] = field(default_factory=Counter)  # DLQ reason it would have got
    failed: Counter[str] = field(default_factory=Counter)  # exception class name

    @property
    def ok(self) -> bool:
        return not self.invalid and not self.failed


class EngageProducer:
    """Produce events for engage: validated, keyed by customer_id, murmur2-partitioned.

    The partition is computed here from the topic's partition count (the same function the
    worker checks with) and passed explicitly, so it stays right even if the producer is
    configured with another partitioner. acks=all and idempotence: a retried send is not a
    duplicate, and `acked` only counts sends the broker confirmed.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str = "127.0.0.1:9092",
        namespace: str = "engage",
        source: str = DEFAULT_SOURCE,
        client_id: str = "engage-client",
        producer_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        from aiokafka import AIOKafkaProducer

        self.namespace = namespace
        self.source = source
        self.acked = 0
        kwargs: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
        }
        kwargs.update(producer_kwargs or {})
        self._producer = AIOKafkaProducer(**kwargs)
        self._partitions: dict[str, int] = {}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> EngageProducer:
        """Configured from the worker's variables: ENGAGE_BROKER, ENGAGE_TOPIC_NAMESPACE and
        the SASL/SSL settings, so one environment configures the whole stack."""
        options = KafkaOptions.from_env(env)
        client = options.client_kwargs()
        servers = client.pop("bootstrap_servers")
        extra = {**client, **kwargs.pop("producer_kwargs", {})}
        return cls(
            bootstrap_servers=servers,
            namespace=options.namespace,
            producer_kwargs=extra,
            **kwargs,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> EngageProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def prepare(self, event: dict[str, Any] | BaseModel) -> Envelope:
        """Validate and encode without sending (raises InvalidEvent)."""
        return envelope(event, namespace=self.namespace, source=self.source)

    async def partition_for(self, env: Envelope) -> int:
        """The murmur2 partition of the envelope's key among its topic's partitions."""
        count = self._partitions.get(env.topic)
        if count is None:
            parts = await self._producer.partitions_for(env.topic)
            if not parts:
                raise RuntimeError(f"topic {env.topic} does not exist (run `engage topics`)")
            count = self._partitions[env.topic] = len(parts)
        return expected_partition(env.key, count)

    async def send(self, event: dict[str, Any] | BaseModel) -> Any:
        """Produce one event and wait for the acknowledgement; returns its RecordMetadata."""
        env = self.prepare(event)
        partition = await self.partition_for(env)
        metadata = await self._producer.send_and_wait(
            env.topic, env.value, key=env.key, partition=partition, headers=env.headers
        )
        self.acked += 1
        return metadata

    async def send_many(self, events: Iterable[dict[str, Any] | BaseModel]) -> SendReport:
        """Produce many events (pipelined) and wait for every acknowledgement; invalid ones
        are skipped and counted by the DLQ reason they would have got."""
        report = SendReport()
        futures: list[asyncio.Future[Any]] = []
        for event in events:
            try:
                env = self.prepare(event)
            except InvalidEvent as exc:
                report.invalid[exc.reason] += 1
                continue
            partition = await self.partition_for(env)
            futures.append(
                await self._producer.send(
                    env.topic, env.value, key=env.key, partition=partition, headers=env.headers
                )
            )
        for outcome in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(outcome, BaseException):
                report.failed[type(outcome).__name__] += 1
            else:
                report.acked += 1
        self.acked += report.acked
        return report
