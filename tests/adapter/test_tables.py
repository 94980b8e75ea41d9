"""Chunked reads of a table store (`scan_store`): against a real RocksDB database (rocksdict,
as Faust's `rocksdb://` store opens it) and a dict (`memory://`), without Kafka."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import rocksdict

from stream.adapter.tables import scan_store

OFFSET_KEY = b"__faust\0offset__"


def rocksdb_store(tmp_path: Path, partitions: dict[int, dict[bytes, bytes]]) -> SimpleNamespace:
    dbs = {}
    for p, entries in partitions.items():
        db = rocksdict.Rdict(str(tmp_path / f"p{p}.db"), options=rocksdict.Options(raw_mode=True))
        db[OFFSET_KEY] = b"41"  # what Faust keeps next to the data
        for k, v in entries.items():
            db[k] = v
        dbs[p] = db
    return SimpleNamespace(_dbs=dbs, offset_key=OFFSET_KEY)


def test_rocksdb_scan_reads_each_partition_once_in_chunks_without_the_offset_key(
    tmp_path: Path,
) -> None:
    p0 = {f"a{i:03d}".encode(): f"v{i}".encode() for i in range(7)}
    p1 = {f"b{i:03d}".encode(): b"x" for i in range(3)}
    store = rocksdb_store(tmp_path, {0: p0, 1: p1, 2: {b"c": b"y"}})
    chunks = list(scan_store(store, [0, 1], chunk=3))
    assert [len(c) for c in chunks] == [3, 3, 1, 3]
    assert dict(pair for c in chunks for pair in c) == {**p0, **p1}  # partition 2 not asked


def test_rocksdb_scan_sees_writes_made_between_chunks_and_stops_at_a_revoked_partition(
    tmp_path: Path,
) -> None:
    store = rocksdb_store(tmp_path, {0: {b"k1": b"old", b"k2": b"old", b"k3": b"old"}, 1: {}})
    scan = scan_store(store, [0, 1], chunk=1)
    assert next(scan) == [(b"k1", b"old")]
    store._dbs[0][b"k2"] = b"new"  # a batch wrote it meanwhile
    assert next(scan) == [(b"k2", b"new")]
    store._dbs[1][b"z"] = b"1"
    del store._dbs[0]  # revoked: Faust drops the database
    assert list(scan) == [[(b"z", b"1")]]


def test_memory_scan_reads_values_as_they_are_when_their_chunk_is_read() -> None:
    data = {b"k1": b"1", b"k2": b"2", b"k3": b"3"}
    scan = scan_store(SimpleNamespace(data=data), [0], chunk=2)
    assert next(scan) == [(b"k1", b"1"), (b"k2", b"2")]
    data[b"k4"] = b"4"  # written after the keys were listed: a record reads it instead
    del data[b"k3"]  # erased meanwhile
    assert list(scan) == [[]]
