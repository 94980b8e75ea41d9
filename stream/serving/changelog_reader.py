"""Reading the `customers` table's changelog back, one partition at a time.

The changelog, not Redis, is the source of truth of every profile: `engage project rebuild`
reads it to recreate the projection. This module is the product's one reader of it outside
Faust, so the rules of reading it (read_committed, the end found by position, tombstones
dropping a key) are in one place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from stream.topic_names import customers_changelog


async def changelog_partitions(settings: Any) -> AsyncIterator[dict[str, bytes]]:
    """The `customers` changelog, one partition at a time: latest value per customer.

    A customer's key lives in one partition, so a partition's dict is final when it is read,
    and memory stays at one partition's customers rather than the whole table. Tombstones
    (None values) drop the key. read_committed, and `position` rather than the last message's
    offset, decide the end: an exactly-once changelog ends with transaction markers that are
    never delivered as messages.
    """
    from aiokafka import TopicPartition

    from stream.kafka_client import check_access
    from stream.kafka_client import consumer as kafka_consumer

    topic = customers_changelog(settings.app_id)
    await check_access(settings)
    consumer = kafka_consumer(
        settings,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        # A bounded read of history: never let the broker hold a fetch open waiting for new
        # data (500 ms by default), which every move to the next partition would pay.
        fetch_max_wait_ms=20,
    )
    from stream.adapter.faust_private import refresh_metadata  # loads no Faust

    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await refresh_metadata(consumer)
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise LookupError(f"changelog topic {topic} not found (is ENGAGE_APP_ID right?)")
        for p in sorted(partitions):
            tp = TopicPartition(topic, p)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            latest: dict[str, bytes] = {}
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
                for msg in batch.get(tp, []):
                    cid = msg.key.decode("utf-8")
                    if msg.value is None:
                        latest.pop(cid, None)
                    else:
                        latest[cid] = msg.value
            yield latest
    finally:
        await consumer.stop()
