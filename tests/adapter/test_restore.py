"""Changelog restore a fetch at a time (`stream.adapter.restore`) against Faust's own
per-record recovery loop: the same table contents, offsets and end of recovery, with a real
RocksDB in a temp dir and with `memory://`, without Kafka."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from stream.adapter.restore import restore_fetch
from stream.adapter.tables import PartitionedTable

# (partition, key, value): updates of one key, tombstones, a key deleted then written again.
CHANGES = [
    (0, b"a", b"a1"),
    (1, b"b", b"b1"),
    (0, b"c", b"c1"),
    (0, b"a", b"a2"),
    (1, b"b", None),
    (1, b"d", b"d1"),
    (0, b"c", None),
    (0, b"c", b"c2"),
    (1, b"e", b"e1"),
    (1, b"d", b"d2"),
    (0, b"f", None),
]


def _app(store: str, datadir: Path) -> tuple[faust.App, PartitionedTable]:
    app = faust.App("t-restore", store=store, datadir=str(datadir), broker="kafka://127.0.0.1:1")
    table = PartitionedTable(
        app,
        name="customers",
        default=None,
        partitions=2,
        key_type=bytes,
        value_type=bytes,
        source_topic="t.clock",
    )
    app.tables.add(table)
    return app, table


def _records(topic: str) -> dict[int, list[ConsumerRecord]]:
    out: dict[int, list[ConsumerRecord]] = {0: [], 1: []}
    for partition, key, value in CHANGES:
        offset = len(out[partition])
        out[partition].append(
            ConsumerRecord(topic, partition, offset, 0, 0, key, value, None, 1, 1, ())
        )
    return out


def _start_recovery(app: faust.App, table: PartitionedTable) -> tuple[Any, list[TP]]:
    """The recovery as `_restart_recovery` leaves it before fetching: both partitions active,
    nothing restored yet (-1), highwaters at the last offset."""
    recovery = app.tables.recovery
    topic = table.changelog_name
    tps = [TP(topic, 0), TP(topic, 1)]
    for tp, recs in zip(tps, _records(topic).values(), strict=True):
        recovery.tp_to_table[tp] = table
        recovery.active_tps.add(tp)
        recovery.active_offsets[tp] = -1
        recovery.active_highwaters[tp] = recs[-1].offset
    recovery._set_recovery_started()
    return recovery, tps


def _contents(table: PartitionedTable) -> tuple[dict[int, dict[bytes, bytes]], dict[int, Any]]:
    """Each partition's stored pairs, and each partition's persisted offset (rocksdb)."""
    pairs: dict[int, dict[bytes, bytes]] = {0: {}, 1: {}}
    offsets: dict[int, Any] = {}
    for partition in (0, 1):
        for chunk in table.scan([partition]):
            pairs[partition].update(chunk)
        offsets[partition] = table.data.persisted_offset(TP(table.changelog_name, partition))
    if not table.persists_offsets:  # memory://: one dict, partitions from `_key_partition`
        every = {k: v for chunk in table.scan([]) for k, v in chunk}
        where = table.data._key_partition
        pairs = {p: {k: v for k, v in every.items() if where[k] == p} for p in (0, 1)}
    return pairs, offsets


async def _faust_restore(app: faust.App, table: PartitionedTable) -> None:
    """Faust's own path: every record an event on the changelog queue, `_slurp_changelogs`."""
    recovery, tps = _start_recovery(app, table)
    app.flow_control.resume()
    queue = app.tables.changelog_queue
    for tp, recs in zip(tps, _records(table.changelog_name).values(), strict=True):
        for rec in recs:
            message = ConsumerMessage(
                rec.topic, rec.partition, rec.offset, 0.0, 0, [], rec.key, rec.value, None,
                1, 1, tp,
            )  # fmt: skip
            await queue.put(app.create_event(rec.key, rec.value, [], message))
    slurp = asyncio.ensure_future(recovery._slurp_changelogs(recovery))  # a ServiceTask
    try:
        await asyncio.wait_for(recovery.signal_recovery_end.wait(), timeout=10)
    finally:
        slurp.cancel()


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_a_fetch_at_a_time_restores_what_fausts_per_record_recovery_restores(
    tmp_path: Path, store: str
) -> None:
    ref_app, ref_table = _app(store, tmp_path / "faust")
    asyncio.run(_faust_restore(ref_app, ref_table))
    expected = _contents(ref_table)
    assert expected[0][0] == {b"a": b"a2", b"c": b"c2"}  # the reference is not empty

    app, table = _app(store, tmp_path / "batched")
    recovery, (tp0, tp1) = _start_recovery(app, table)
    records = _records(table.changelog_name)
    # p0 in two fetches, the second repeating an offset already restored (a seek back)
    assert restore_fetch(recovery, tp0, records[0][:3]) == 3
    assert restore_fetch(recovery, tp0, records[0][2:]) == len(records[0]) - 3
    assert recovery.in_recovery and not recovery.signal_recovery_end.is_set()  # p1 remains
    assert restore_fetch(recovery, tp1, records[1]) == len(records[1])
    assert not recovery.in_recovery and recovery.signal_recovery_end.is_set()
    assert not app.in_recovery
    assert _contents(table) == expected
    assert restore_fetch(recovery, tp1, records[1]) == 0  # all seen: nothing applied again


def test_records_of_a_partition_neither_restored_nor_mirrored_are_not_applied(
    tmp_path: Path,
) -> None:
    app, table = _app("rocksdb://", tmp_path)
    recovery, (tp0, _) = _start_recovery(app, table)
    recovery.active_tps.discard(tp0)  # revoked after its fetch
    assert restore_fetch(recovery, tp0, _records(table.changelog_name)[0]) == 0
    assert _contents(table)[0][0] == {}


def test_a_standby_partition_is_mirrored_and_reported_ready(tmp_path: Path) -> None:
    app, table = _app("rocksdb://", tmp_path)
    recovery = app.tables.recovery
    tp = TP(table.changelog_name, 1)
    recs = _records(table.changelog_name)[1]
    recovery.tp_to_table[tp] = table
    recovery.standby_tps.add(tp)
    recovery.standby_offsets[tp] = -1
    recovery.standby_highwaters[tp] = recs[-1].offset
    assert restore_fetch(recovery, tp, recs) == len(recs)
    assert _contents(table)[0][1] == {b"d": b"d2", b"e": b"e1"}
    assert app.tables.standbys_ready


def test_the_restore_progress_is_exported_by_role(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from stream.adapter.faust_sensor import FaustSensor

    app, table = _app("rocksdb://", tmp_path)
    recovery, (tp0, tp1) = _start_recovery(app, table)
    recovery.active_tps.discard(tp1)  # p1 mirrored here instead of owned
    recovery.standby_tps.add(tp1)
    recovery.standby_offsets[tp1] = -1
    recovery.standby_highwaters[tp1] = recovery.active_highwaters.pop(tp1)
    registry = CollectorRegistry()
    registry.register(FaustSensor(app))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    records = _records(table.changelog_name)
    assert value("engage_faust_table_partitions", role="active") == 1
    assert value("engage_faust_table_partitions", role="standby") == 1
    assert value("engage_faust_recovery_remaining_records", role="active") == len(records[0])
    assert value("engage_faust_standbys_ready") == 0
    restore_fetch(recovery, tp0, records[0])
    restore_fetch(recovery, tp1, records[1])
    assert value("engage_faust_recovery_remaining_records", role="active") == 0
    assert value("engage_faust_recovery_remaining_records", role="standby") == 0
    assert value("engage_faust_standbys_ready") == 1


def test_one_standby_replica_by_default_with_rocksdb_none_with_memory_passed_to_faust() -> None:
    from stream.adapter.app import create_app
    from stream.settings import Settings

    def replicas(**settings: object) -> int:
        conf = create_app(Settings(redis_enabled=False, **settings)).app.conf  # type: ignore[arg-type]
        return int(conf.table_standby_replicas)

    assert replicas(store="rocksdb://") == 1
    assert replicas(store="memory://") == 0
    assert replicas(store="rocksdb://", standby_replicas=0) == 0
    assert replicas(store="memory://", standby_replicas=2) == 2
