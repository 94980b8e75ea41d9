"""A small Python client for teams that emit events into engage.

`EngageProducer` validates each event against the same models the worker uses, encodes it as
the exact JSON bytes the worker will read, and produces it to the event type's topic with the
`customer_id` as the key, on the partition Kafka's murmur2 key partitioner gives that key
(the one the worker checks), with CloudEvents-style headers. It counts a send only once Kafka
has acknowledged it (acks=all).

    async with EngageProducer.from_env() as producer:
        await producer.send({"event_id": "...", "customer_id": "c-42", "type": "click", ...})

May import: ``stream.core`` (validation rules, partitioning), ``schemas``, aiokafka, and
``stream.kafka_client`` (``KafkaOptions``, the one reader of the ENGAGE_ Kafka variables for
clients other than the worker); never ``stream.tools``. Nothing else in ``stream`` imports the
client.
"""

from stream.client.envelope import Envelope, InvalidEvent, envelope
from stream.client.producer import EngageProducer, SendReport

__all__ = ["EngageProducer", "Envelope", "InvalidEvent", "SendReport", "envelope"]
