"""The worker's topics and tables, declared on the Faust app (no I/O until the worker starts).

One place says what the worker reads (the co-partitioned inputs, the clock/control topic and the
erasures topic, as raw bytes), what it writes (DLQ, decisions, nudges, replay status, erasure
receipts) and which tables it keeps (`customers`, `control`), so the app's wiring reads as a
list of parts rather than of topic declarations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from stream.adapter.tables import PartitionedTable
from stream.core.vocabulary import OutputName
from stream.settings import Settings
from stream.topic_names import CONTROL_TABLE, CUSTOMERS_TABLE

#: bytes keys and values with the raw codec: the worker encodes values itself.
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


@dataclass(frozen=True)
class Topology:
    """The app's topics and tables, as the agent, the timers and the shell use them."""

    inputs: Any  # the agent's topic: inputs, clock and erasures, co-partitioned
    clock: Any  # the clock topic alone (timers send ticks to it)
    outputs: dict[str, Any]  # the engine's output name -> topic, as `BatchShell` sends to them
    customers: PartitionedTable
    control: PartitionedTable


def declare(app: faust.App, settings: Settings) -> Topology:
    """Declare the worker's topics and tables on `app`."""
    inputs = app.topic(
        *settings.input_topics.values(),
        settings.clock_topic,
        settings.erasures_topic,  # co-partitioned: the owner of a customer forgets it
        partitions=settings.partitions,
        **RAW,
    )
    clock = app.topic(settings.clock_topic, partitions=settings.partitions, **RAW)
    outputs = {
        name: app.topic(topic, partitions=settings.partitions, **RAW)
        for name, topic in {
            OutputName.DLQ: settings.dlq_topic,
            OutputName.DECISIONS: settings.decisions_topic,
            OutputName.NUDGES: settings.nudges_topic,
            OutputName.REPLAY_STATUS: settings.replay_status_topic,
            OutputName.ERASURE_RECEIPTS: settings.erasure_receipts_topic,
        }.items()
    }
    return Topology(
        inputs=inputs,
        clock=clock,
        outputs=outputs,
        customers=_table(app, CUSTOMERS_TABLE, settings),
        control=_table(app, CONTROL_TABLE, settings),
    )


def _table(app: faust.App, name: str, settings: Settings) -> PartitionedTable:
    # Should Faust create the changelog (`engage topics` normally has), it gets the same
    # in-sync minimum as the other topics.
    durability = (
        {"min.insync.replicas": str(settings.min_insync_replicas)}
        if settings.min_insync_replicas
        else {}
    )
    # bytes key and value types make Faust use the raw codec: we encode values ourselves.
    table = PartitionedTable(
        app,
        name=name,
        default=None,
        beacon=app.tables.beacon,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        source_topic=settings.clock_topic,
        extra_topic_configs=durability,
    )
    app.tables.add(table)
    return table
