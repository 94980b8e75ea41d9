"""Creating the product's topics with the partition count the settings name.

Faust creates only its own internal topics; input topics must exist, co-partitioned (SPEC §1),
before the worker subscribes, or the consumer silently ignores them. So the worker runs this
first, and `engage topics` runs it for operators. A topic that exists with another partition
count is an error: co-partitioning is what keeps a customer on one worker.

Retention: with `ENGAGE_AUDIT_RETENTION_DAYS` / `ENGAGE_DLQ_RETENTION_DAYS` set, the audit
topics (nudge-decisions, nudges) and the two DLQs (the worker's and the webhook forwarder's)
get that `retention.ms`, at creation and, for topics that already exist, by altering their
config (SPEC §4 Erasure: the audit trail keeps only what its retention allows).

Erasure: the tables' changelog topics get the compaction configs derived from
`ENGAGE_ERASURE_MAX_DAYS` (`Settings.changelog_configs`), at creation and, for changelogs that
exist with other values (created by an older version, or by Faust), by altering them: without
them a compacted topic keeps an erased customer's old states in segments the cleaner has no
reason to touch, for ever.

Replication: every topic is created with `ENGAGE_REPLICATION_FACTOR` copies and
`ENGAGE_MIN_INSYNC_REPLICAS`; unset, they follow the number of brokers the cluster reports
(`Settings.replication_for`): 3 copies of which 2 must be in sync on a cluster of three or more,
so an acks=all write survives the loss of one broker, and 1 copy on a single dev broker.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError, for_code

from stream.kafka_client import KafkaAccessError, check_access, describe_error, is_auth_error
from stream.kafka_client import admin as admin_client
from stream.settings import Settings, load_settings


class TopicMismatch(RuntimeError):
    """The topics cannot be as configured: an existing topic has a partition count other than
    the configured one, or the replication factor asks for more copies than there are brokers."""


@dataclass(frozen=True)
class TopicsReport:
    """What `ensure_topics` did and found: the topics it created, the replication it created
    them with, and existing topics with fewer copies than that (created on a smaller cluster)."""

    created: list[str]
    brokers: int
    replication_factor: int
    min_insync_replicas: int
    under_replicated: dict[str, int] = field(default_factory=dict)


async def ensure_topics(settings: Settings, *, timeout_s: float = 60.0) -> TopicsReport:
    """Create the missing topics and apply the configured retention and replication.

    Waits for the broker to come up, but not for credentials it refuses."""
    await check_access(settings)  # a wrong password is an error now, not a minute of retries
    admin = admin_client(settings)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            await admin.start()
            break
        except KafkaConnectionError as exc:
            if is_auth_error(exc) or loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)
    try:
        compacted = set(settings.changelog_topics())
        # The forwarder's DLQ too: it holds nudges, so its retention is managed here as well.
        wanted = [
            *settings.all_topics(),
            settings.forward_dlq_topic,
            *settings.changelog_topics(),
        ]
        # Describe only topics that exist: a metadata request for a missing topic makes a
        # broker with auto.create.topics.enable create it, with the broker's partition count.
        present = set(await admin.list_topics())
        existing = (
            await admin.describe_topics([t for t in wanted if t in present]) if present else []
        )
        ok = [t for t in existing if t.get("error_code", 0) == 0]
        counts = {t["topic"]: len(t["partitions"]) for t in ok}
        wrong = {name: n for name, n in counts.items() if n != settings.partitions}
        if wrong:
            raise TopicMismatch(
                f"topics exist with a partition count other than {settings.partitions}: {wrong}"
            )
        brokers = len((await admin.describe_cluster())["brokers"])
        factor, in_sync = settings.replication_for(brokers)
        missing = [name for name in wanted if name not in counts]
        if missing and factor > brokers:
            raise TopicMismatch(
                f"ENGAGE_REPLICATION_FACTOR={factor} but the cluster has {brokers} broker"
                f"{'s' if brokers != 1 else ''}: a topic cannot have more copies than brokers"
            )
        copies = {t["topic"]: min(len(p["replicas"]) for p in t["partitions"]) for t in ok}
        retention = settings.retention_ms()
        # The DLQ takes any message an input topic took, plus the dead-letter headers.
        dlq = {"max.message.bytes": str(settings.dlq_max_bytes)}

        changelog = settings.changelog_configs()

        def durability(name: str) -> dict[str, str]:
            # An existing topic with fewer copies keeps a minimum it can meet.
            return {"min.insync.replicas": str(min(in_sync, copies.get(name, factor)))}

        def extra(name: str) -> dict[str, str]:
            if name in compacted:  # the tables' changelogs, bounded for erasure
                return {**durability(name), **changelog}
            return {**durability(name), **(dlq if name == settings.dlq_topic else {})}

        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        name,
                        settings.partitions,
                        factor,
                        topic_configs=_configs(retention.get(name), extra(name)),
                    )
                    for name in missing
                ]
            )
        # AlterConfigs replaces a topic's whole set: restate the DLQ's size and the in-sync
        # minimum too.
        alter = {
            name: _configs(retention[name], extra(name)) for name in retention if name in counts
        }
        stale = [name for name in compacted if name in counts]
        if stale:
            current = await _describe_configs(admin, stale)
            for name in stale:
                if any(current.get(name, {}).get(k) != v for k, v in changelog.items()):
                    alter[name] = extra(name)
        if alter:
            _check(await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, configs)
                 for name, configs in alter.items()]
            ))  # fmt: skip
        return TopicsReport(
            created=missing,
            brokers=brokers,
            replication_factor=factor,
            min_insync_replicas=in_sync,
            under_replicated={t: n for t, n in sorted(copies.items()) if n < factor},
        )
    finally:
        await admin.close()


async def _describe_configs(admin: Any, names: list[str]) -> dict[str, dict[str, str]]:
    """Topic -> its current configs (name -> value), as the broker describes them."""
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    )
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for code, message, _kind, name, entries in response.resources:
            if code:
                raise for_code(code)(f"describing the configs of {name}: {message}")
            out[name] = {entry[0]: entry[1] for entry in entries}
    return out


def _check(responses: list[Any]) -> None:
    """Raise the broker's error for a config change it refused (not silently kept as is)."""
    for response in responses:
        for code, message, _kind, name in response.resources:
            if code:
                raise for_code(code)(f"altering the configs of {name}: {message}")


def _configs(retention_ms: int | None, extra: dict[str, str]) -> dict[str, str]:
    """A new topic's configs: its retention setting, if any, and the extra ones it needs."""
    return {**extra, **({} if retention_ms is None else {"retention.ms": str(retention_ms)})}


def main(argv: list[str]) -> int:
    """`engage topics`: create what is missing, apply retention, and say what was done."""
    from stream.cli import command_parser

    command_parser(
        "topics",
        "Create the input, output, control and dead-letter topics that are missing, with "
        "ENGAGE_PARTITIONS partitions; fail (exit 1) if an existing input topic has another "
        "partition count (co-partitioning).",
    ).parse_args(argv)
    settings = load_settings()
    try:
        report = asyncio.run(ensure_topics(settings))
    except TopicMismatch as exc:
        print(f"engage topics: {exc}", file=sys.stderr)
        return 1
    except (KafkaError, KafkaAccessError, OSError) as exc:
        print(f"engage topics: {describe_error(exc, settings)}", file=sys.stderr)
        return 1
    for name in report.created:
        print(
            f"created {name} ({settings.partitions} partitions, replication factor "
            f"{report.replication_factor}, min.insync.replicas {report.min_insync_replicas})"
        )
    for name, ms in settings.retention_ms().items():
        print(f"retention of {name}: {ms / 86_400_000:g} days")
    print(
        f"changelogs {', '.join(settings.changelog_topics())}: an erased customer's state "
        f"leaves Kafka within {settings.erasure_max_days:g} days (ENGAGE_ERASURE_MAX_DAYS)"
    )
    for name, n in report.under_replicated.items():
        print(
            f"warning: {name} has {n} cop{'y' if n == 1 else 'ies'} per partition, fewer than "
            f"{report.replication_factor} (created on a smaller cluster; add replicas with "
            "kafka-reassign-partitions)",
            file=sys.stderr,
        )
    print(
        f"{len(settings.all_topics())} topics ready on {settings.bootstrap_servers} "
        f"({report.brokers} broker{'s' if report.brokers != 1 else ''})"
    )
    return 0
