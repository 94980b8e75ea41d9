"""Creating the product's topics with the partition count the settings name.

Faust creates only its own internal topics; input topics must exist, co-partitioned (SPEC §1),
before the worker subscribes, or the consumer silently ignores them. So the worker runs this
first, and `engage topics` runs it for operators. A topic that exists with another partition
count is an error: co-partitioning is what keeps a customer on one worker.
"""

from __future__ import annotations

import asyncio
import sys

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

from stream.settings import Settings, load_settings


class TopicMismatch(RuntimeError):
    """An existing topic has a partition count other than the configured one."""


async def ensure_topics(settings: Settings, *, timeout_s: float = 60.0) -> list[str]:
    """Create the missing topics; returns the names created. Waits for the broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)
    try:
        wanted = settings.all_topics()
        # Describe only topics that exist: a metadata request for a missing topic makes a
        # broker with auto.create.topics.enable create it, with the broker's partition count.
        present = set(await admin.list_topics())
        existing = (
            await admin.describe_topics([t for t in wanted if t in present]) if present else []
        )
        counts = {t["topic"]: len(t["partitions"]) for t in existing if t.get("error_code", 0) == 0}
        wrong = {name: n for name, n in counts.items() if n != settings.partitions}
        if wrong:
            raise TopicMismatch(
                f"topics exist with a partition count other than {settings.partitions}: {wrong}"
            )
        missing = [name for name in wanted if name not in counts]
        if missing:
            # The DLQ takes any message an input topic took, plus the dead-letter headers.
            dlq = {"max.message.bytes": str(settings.dlq_max_bytes)}
            await admin.create_topics(
                [
                    NewTopic(
                        name,
                        settings.partitions,
                        settings.replication_factor,
                        topic_configs=dlq if name == settings.dlq_topic else None,
                    )
                    for name in missing
                ]
            )
        return missing
    finally:
        await admin.close()


def main(argv: list[str]) -> int:
    """`engage topics`: create what is missing and say what was done."""
    from stream.cli import command_parser

    command_parser(
        "topics",
        "Create the input, output, control and dead-letter topics that are missing, with "
        "ENGAGE_PARTITIONS partitions; fail (exit 1) if an existing input topic has another "
        "partition count (co-partitioning).",
    ).parse_args(argv)
    settings = load_settings()
    try:
        created = asyncio.run(ensure_topics(settings))
    except TopicMismatch as exc:
        print(f"engage topics: {exc}", file=sys.stderr)
        return 1
    for name in created:
        print(f"created {name} ({settings.partitions} partitions)")
    print(f"{len(settings.all_topics())} topics ready on {settings.bootstrap_servers}")
    return 0
