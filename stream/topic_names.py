"""Every Kafka name engage derives from a topic namespace or an app id, spelt once.

Why a module of its own and not methods of `Settings`: the worker has a `Settings`, but the
tools (`engage forward`, the emitter), the benchmarks and the tests often know only a namespace
or an app id. They all call these functions, and `Settings`' topic properties call them too, so
a name (say, the changelog Faust keeps for the `customers` table) has one spelling to change.
Pure string functions: no I/O, no settings read.
"""

from __future__ import annotations

from schemas.events import TOPIC_SUFFIX

#: The worker's two Faust tables; Faust names each one's changelog after it.
CUSTOMERS_TABLE = "customers"
CONTROL_TABLE = "control"
TABLES = (CUSTOMERS_TABLE, CONTROL_TABLE)


def namespaced(namespace: str, suffix: str) -> str:
    """`{namespace}.{suffix}`: every topic engage reads or writes, apart from the changelogs."""
    return f"{namespace}.{suffix}"


def input_topic(namespace: str, event_type: str) -> str:
    """The input topic of an event type (`click` -> `{namespace}.clicks`)."""
    return namespaced(namespace, TOPIC_SUFFIX[event_type])


def dlq_topic(namespace: str) -> str:
    """The worker's dead-letter topic (inputs it could not accept)."""
    return namespaced(namespace, "dlq")


def nudges_topic(namespace: str) -> str:
    """Nudges to deliver (read by `engage forward` and the emitter)."""
    return namespaced(namespace, "nudges")


def decisions_topic(namespace: str) -> str:
    """The audit trail: every decision, delivered or not."""
    return namespaced(namespace, "nudge-decisions")


def clock_topic(namespace: str) -> str:
    """Clock ticks and replay declarations, co-partitioned with the inputs."""
    return namespaced(namespace, "clock")


def replay_status_topic(namespace: str) -> str:
    """Replay completion reports."""
    return namespaced(namespace, "replay-status")


def erasures_topic(namespace: str) -> str:
    """Erasure requests, keyed by customer id, co-partitioned with the inputs."""
    return namespaced(namespace, "erasures")


def erasure_receipts_topic(namespace: str) -> str:
    """One receipt per erasure carried out."""
    return namespaced(namespace, "erasure-receipts")


def forward_dlq_topic(namespace: str) -> str:
    """Nudges `engage forward` could not deliver (refused, expired)."""
    return namespaced(namespace, "forward-dlq")


def forward_group(namespace: str) -> str:
    """`engage forward`'s default consumer group."""
    return namespaced(namespace, "forward")


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog Faust keeps for a table of app `app_id` (Faust's own naming rule)."""
    return f"{app_id}-{table}-changelog"


def customers_changelog(app_id: str) -> str:
    """The `customers` table's changelog: every customer's latest state (compacted)."""
    return changelog_topic(app_id, CUSTOMERS_TABLE)


def control_changelog(app_id: str) -> str:
    """The `control` table's changelog: each partition's clock and progress (compacted)."""
    return changelog_topic(app_id, CONTROL_TABLE)
