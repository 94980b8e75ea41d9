"""The Quix Streams benchmark row runs the engage core faithfully (`bench/quix_engage.py`).

Its per-key adapter drives the partition engines one record at a time over key-prefixed state
(Quix's State API); these tests drive it over a dict with that API, so they need no Quix Streams
(a bench-only dependency) and check that the benchmark measures the real work: the same
customer states and decisions as the worker's batch path for the same records and wall clock.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from bench.core import NS, PARTITIONS, records
from bench.quix_engage import STATE_KEY, PerKeyEngage, QuixCustomerStore, engine_config
from stream.core.clock import clock_for, wall_ms
from stream.core.driver import MemoryDriver
from stream.core.engine import DECISIONS


class DictState:
    """Quix's per-key State over a dict: every key is stored under the state's prefix."""

    def __init__(self, data: dict[tuple[Any, str], bytes], prefix: Any) -> None:
        self.data, self.prefix = data, prefix

    def get_bytes(self, key: str, default: bytes | None = None) -> bytes | None:
        return self.data.get((self.prefix, key), default)

    def set_bytes(self, key: str, value: bytes) -> None:
        self.data[(self.prefix, key)] = value

    def delete(self, key: str) -> None:
        self.data.pop((self.prefix, key), None)


class DictTransaction:
    """A partition transaction: a State per key prefix, all in one dict."""

    def __init__(self) -> None:
        self.data: dict[tuple[Any, str], bytes] = {}

    def as_state(self, prefix: Any = None) -> DictState:
        return DictState(self.data, prefix)


def test_store_keeps_each_customer_under_its_own_key() -> None:
    store = QuixCustomerStore()
    store.transaction = tx = DictTransaction()
    store.put(b"c-1", b"one")
    store.put(b"c-2", b"two")
    store.put_clock(3, b'{"clock":1}')
    assert (store.get(b"c-1"), store.get(b"c-2"), store.get(b"c-3")) == (b"one", b"two", None)
    assert tx.data[(b"c-1", STATE_KEY)] == b"one"  # the customer's own per-key state
    assert store.clock(3) == b'{"clock":1}' and store.clock(2) is None
    store.delete(b"c-1")
    assert store.get(b"c-1") is None and store.get(b"c-2") == b"two"


@pytest.mark.parametrize("mode", ["live", "follow"])
def test_per_key_records_give_the_worker_batch_results(mode: str) -> None:
    # live: the benchmark's clock; follow (event time): rituals come due while other customers'
    # records are read, so the per-key path must also write the customers those wake.
    recs = records(3000, seed=1)
    config = dataclasses.replace(engine_config(NS, PARTITIONS), clock=clock_for(mode))
    wall = wall_ms() + 3_600_000  # read once: both paths see one wall clock, after the traffic

    driver = MemoryDriver(config)
    for i in range(0, len(recs), 500):
        driver.pipe(recs[i : i + 500], wall_ms=wall)
    driver.settle()  # the last batch's acknowledged decisions leave their outboxes

    per_key = PerKeyEngage(config, clock=lambda: wall)
    txs = {p: DictTransaction() for p in range(PARTITIONS)}
    decisions: dict[str, bytes] = {}
    for record in recs:
        for out in per_key.handle(record, txs[record.partition]):
            if out.name == DECISIONS and out.nudge_id is not None:
                decisions.setdefault(out.nudge_id, out.value or b"")
    for p, acked in per_key.acked.items():  # what each partition's next record would clear
        per_key.store.transaction = txs[p]
        for key, raw in per_key.engines[p].settle(acked).states.items():
            per_key.store.put(key, raw)

    states = {
        prefix: raw
        for tx in txs.values()
        for (prefix, key), raw in tx.data.items()
        if key == STATE_KEY
    }
    assert driver.decisions(), "the traffic must decide something for the comparison to matter"
    assert decisions == driver.decisions()
    assert states == driver.customers
    assert per_key.counts == driver.counts
