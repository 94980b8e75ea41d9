"""Topic configs on a real broker: the tables' changelogs bound how long an erased customer's
state stays in Kafka (SPEC §4 Erasure), on new topics and on topics an older version created."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream.adapter.topics import ensure_topics
from stream.kafka_client import admin as admin_client
from stream.settings import Settings
from stream.topic_names import control_changelog, customers_changelog
from tests.harness import unique, wait_for

pytestmark = pytest.mark.integration

BOUND_KEYS = ("segment.ms", "max.compaction.lag.ms", "delete.retention.ms")
DAY_MS = 86_400_000


async def _with_admin(settings: Settings, work: Any) -> Any:
    admin = admin_client(settings)
    await admin.start()
    try:
        return await work(admin)
    finally:
        await admin.close()


def _configs(settings: Settings, topics: list[str]) -> dict[str, dict[str, str]]:
    """What the broker says the topics' configs are (describe_configs)."""

    async def describe(admin: Any) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        for response in await admin.describe_configs(resources):
            for code, _message, _kind, name, entries in response.resources:
                assert code == 0, (name, code)
                out[name] = {entry[0]: entry[1] for entry in entries}
        return out

    return asyncio.run(_with_admin(settings, describe))


def _within(days: float, settings: Settings, topics: list[str]) -> dict[str, dict[str, str]] | None:
    """The topics' configs once each is compacted with the three bounding configs adding up to
    at most `days` (a config change, or a topic just created, reaches the broker answering a
    describe a moment after it is accepted), else None."""
    try:
        configs = _configs(settings, topics)
    except AssertionError:  # a topic the answering broker does not know yet
        return None
    for topic in topics:
        got = configs[topic]
        values = [int(got[k]) for k in BOUND_KEYS]
        if got["cleanup.policy"] != "compact" or min(values) <= 0 or sum(values) > days * DAY_MS:
            return None
    return configs


def test_changelogs_get_the_erasure_bound_new_and_existing(bootstrap: str) -> None:
    name = unique("bound")
    settings = Settings(broker=f"kafka://{bootstrap}", app_id=name, topic_namespace=name,
                        partitions=2, erasure_max_days=2)  # fmt: skip
    customers, control = changelogs = [customers_changelog(name), control_changelog(name)]

    async def create_old_style(admin: Any) -> None:  # what the previous version created
        await admin.create_topics(
            [NewTopic(customers, 2, 1, topic_configs={"cleanup.policy": "compact"})]
        )

    async def listed(admin: Any) -> bool:
        return customers in await admin.list_topics()

    asyncio.run(_with_admin(settings, create_old_style))
    wait_for(lambda: asyncio.run(_with_admin(settings, listed)), timeout=15, what="the topic")
    created = asyncio.run(ensure_topics(settings)).created
    assert control in created and customers not in created

    configs = wait_for(
        lambda: _within(2, settings, changelogs), timeout=15, what="changelogs bounded to 2 days"
    )
    for topic in changelogs:  # the derivation: 3/7, 3/7 and 1/7 of the bound
        got = configs[topic]
        assert int(got["segment.ms"]) == int(got["max.compaction.lag.ms"]) == 3 * 2 * DAY_MS // 7
        assert int(got["delete.retention.ms"]) == 2 * DAY_MS - 2 * int(got["segment.ms"])

    # A tighter bound later is applied to the existing topics too.
    tighter = Settings(broker=f"kafka://{bootstrap}", app_id=name, topic_namespace=name,
                       partitions=2, erasure_max_days=1)  # fmt: skip
    assert asyncio.run(ensure_topics(tighter)).created == []
    wait_for(lambda: _within(1, tighter, changelogs), timeout=15, what="the tighter bound")
