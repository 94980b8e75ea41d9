"""The Faust shell's health rule, without Kafka: /healthz fails on a stopped or stalled agent."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from stream.adapter.app import Engage
from stream.settings import Settings


def engage(*, failure: Exception | None = None, idle_s: float = 0.0, waiting: bool = False,
           ready: bool = True) -> Engage:  # fmt: skip
    shell = SimpleNamespace(
        failure=failure,
        last_batch=time.monotonic() - idle_s,
        waiting_input=lambda: waiting,
    )
    settings = Settings(stall_after_s=5, recovery_stuck_after_s=30)
    e = Engage(app=None, settings=settings, table=None, shell=shell,  # type: ignore[arg-type]
               metrics=None, kpis=None)  # type: ignore[arg-type]  # fmt: skip
    e.is_ready = lambda: ready  # type: ignore[method-assign]
    return e


def test_a_working_agent_is_healthy() -> None:
    assert engage().health() == (True, "ok")
    assert engage(idle_s=600).health() == (True, "ok")  # idle with nothing to read is fine


def test_an_agent_stopped_on_an_error_is_unhealthy() -> None:
    ok, why = engage(failure=RuntimeError("secret")).health()
    assert not ok and "RuntimeError" in why and "secret" not in why


def test_no_progress_while_input_waits_is_unhealthy() -> None:
    ok, why = engage(idle_s=10, waiting=True).health()
    assert not ok and "no progress" in why
    assert engage(idle_s=2, waiting=True).health()[0]  # within the allowance


def test_recovering_or_rebalancing_is_not_a_stall() -> None:
    assert engage(idle_s=600, waiting=True, ready=False).health()[0]


def test_a_worker_stuck_in_recovery_becomes_unhealthy() -> None:
    """Faust's table recovery can wait forever for a changelog partition: past the bound,
    /healthz fails so an orchestrator restarts the worker."""
    e = engage(ready=False)
    assert e.health()[0]
    e.not_ready_since = time.monotonic() - 31
    ok, why = e.health()
    assert not ok and "not ready" in why
    e.is_ready = lambda: True  # type: ignore[method-assign]
    assert e.health()[0] and e.not_ready_since is None


# --- input offsets committed (Faust's bookkeeping, see stream.core.commit.next_commit) --------


def _consumer_state(committed: int) -> tuple[SimpleNamespace, object]:
    from collections import defaultdict

    from faust.types import TP
    from intervaltree import IntervalTree

    tp = TP("ns.clicks", 6)
    state = SimpleNamespace(
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
        _committed_offset=defaultdict(lambda: None),
        _gap=defaultdict(IntervalTree),
    )
    state._committed_offset[tp] = committed
    return state, tp


def _read(state: SimpleNamespace, tp: object, *, last: int, offset: int) -> None:
    """What Faust's drain loop does when it reads `offset` after `last`: a jump is a "gap"."""
    import asyncio

    from faust.transport.consumer import Consumer

    if offset - last > 1:
        asyncio.run(Consumer._add_gap(state, tp, last + 1, offset))


def _ack(state: SimpleNamespace, tp: object, offsets: range | list[int]) -> None:
    for offset in offsets:
        if offset not in state._acked_index[tp]:
            state._acked_index[tp].add(offset)
            state._acked[tp].append(offset)


def test_a_record_read_ahead_after_a_restart_does_not_make_commits_crawl() -> None:
    """kill -9, restart: the fetcher hands over offset 500 right after the committed 447, then
    448..499. Faust counted 448..500 twice and committed one offset per commit interval
    (the partition "advancing 0.4 messages/s" in the chaos suite)."""
    from faust.transport.consumer import Consumer

    from stream.adapter.faust_private import install_commit_rule

    install_commit_rule()
    state, tp = _consumer_state(committed=447)
    _ack(state, tp, [447])
    _read(state, tp, last=447, offset=500)
    _ack(state, tp, range(500, 520))
    _ack(state, tp, range(448, 500))
    assert Consumer._new_offset(state, tp) == 520  # one commit covers everything acknowledged
    assert state._acked[tp] == []
    assert Consumer._new_offset(state, tp) is None


def test_a_commit_never_passes_an_offset_not_yet_processed() -> None:
    """The read-ahead record acknowledged before the ones it jumped over: committing past them
    would lose them at the next crash (the chaos suite's event never folded)."""
    from faust.transport.consumer import Consumer

    from stream.adapter.faust_private import install_commit_rule

    install_commit_rule()
    state, tp = _consumer_state(committed=447)
    _ack(state, tp, [447])
    _read(state, tp, last=447, offset=1169)
    _ack(state, tp, [1169])
    assert Consumer._new_offset(state, tp) == 448
    assert Consumer._new_offset(state, tp) is None  # 448..1168 not processed: wait
    state._committed_offset[tp] = 448  # what Faust records once the commit succeeded
    _ack(state, tp, range(448, 1169))
    assert Consumer._new_offset(state, tp) == 1170


# --- records the consumer skipped (a hole) are read again before anything after them ----------


class _Table:
    """A `PartitionedTable` as the at-least-once sink uses it (one dict for all partitions)."""

    changelog_name = "changelog"
    persists_offsets = False

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def read(self, key: bytes, partition: int) -> bytes | None:
        return self.data.get(key)

    def store(self, key: bytes, value: bytes | None, partition: int) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    def scan(self, partitions: list[int], *, chunk: int) -> Iterator[list[tuple[bytes, bytes]]]:
        items = list(self.data.items())
        for i in range(0, len(items), chunk):
            yield items[i : i + chunk]


OUTPUTS = ("decisions", "nudges", "dlq", "replay_status", "erasure_receipts")


class _Topic:
    def __init__(self, name: str = "topic") -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


class _Producer:
    """Faust's producer driver as the `Sender` calls it: every send recorded per topic and
    acknowledged at once."""

    def __init__(self) -> None:
        self.sent: dict[str, list[dict[str, Any]]] = {}

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
        timestamp: float | None, headers: Any,
    ) -> Any:  # fmt: skip
        import asyncio

        self.sent.setdefault(topic, []).append({"key": key, "value": value})
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(topic_partition=(topic, partition), offset=0))
        return fut

    async def flush(self) -> None:
        pass


def _shell(
    app: Any, *, config: Any, customers: Any, control: Any, metrics: Any,
    write_interval_s: float = 0.0,
) -> Any:  # fmt: skip
    """A `BatchShell` over fakes of the Faust objects, sending through a real `Sender`."""
    from stream.adapter.sender import Sender
    from stream.adapter.shell import BatchShell
    from stream.telemetry.kpis import Kpis

    return BatchShell(
        app=app, config=config, customers=customers, control=control,
        topics={n: _Topic(n) for n in OUTPUTS}, metrics=metrics, kpis=Kpis(metrics.registry),
        sender=Sender(app), write_interval_s=write_interval_s,
    )  # fmt: skip


class _Consumer:
    def __init__(self, committed: dict) -> None:
        self._committed_offset = committed
        self.seeks: list[tuple[object, int]] = []

    def highwater(self, tp: object) -> int:
        raise KeyError(tp)

    async def seek(self, tp: object, offset: int) -> None:
        self.seeks.append((tp, offset))


def test_records_after_offsets_the_consumer_skipped_are_not_folded_before_them() -> None:
    """After a restart Faust handed over clicks 2 and 3 of a partition whose committed offset
    was 0, and dropped 0 and 1. Folding 2 and 3 first made 0 and 1 look like re-reads for ever:
    an event never folded. The shell leaves 2 and 3 out, seeks back to 0, and folds all four."""
    import asyncio

    from faust.types import TP

    from stream.core.state import decode
    from stream.telemetry.metrics import PipelineMetrics
    from tests.core.test_engine import config
    from tests.factory import event, raw

    topic = "t.clicks"
    tp = TP(topic, 1)
    consumer = _Consumer({tp: 0})
    app = SimpleNamespace(consumer=consumer, producer=_Producer())
    customers = _Table()
    shell = _shell(app, config=config("follow"), customers=customers, control=_Table(),
                   metrics=PipelineMetrics())  # fmt: skip

    def message(offset: int) -> SimpleNamespace:
        value = raw(event("click", "cara", days=offset, event_id=f"e-{offset}"))
        msg = SimpleNamespace(topic=topic, partition=1, offset=offset, timestamp=0.0,
                              key=b"cara", value=value, headers=None, acked=False)  # fmt: skip
        return SimpleNamespace(message=msg)

    later = [message(2), message(3)]
    asyncio.run(shell.handle(later))
    assert consumer.seeks == [(tp, 0)]
    assert all(e.message.acked for e in later)  # never counted as processed by the consumer
    assert b"cara" not in customers.data
    asyncio.run(shell.handle([message(o) for o in range(4)]))
    assert decode(customers.data[b"cara"]).counts == {"click": 4}
    assert consumer.seeks == [(tp, 0)]


def _started_shell(revoke_after_first_chunk: int | None = None) -> tuple[Any, Any, Any]:
    """A shell over a table a crashed worker left (timers due later, decisions whose sends
    were never acknowledged), started on both partitions by `prepare`, 3 customers a chunk."""
    import asyncio

    from stream.telemetry.metrics import PipelineMetrics
    from tests.core.test_engine import config, stored_unacknowledged

    driver = stored_unacknowledged(3)
    customers, control = _Table(), _Table()
    customers.data, control.data = dict(driver.customers), dict(driver.control)
    producer = _Producer()
    app = SimpleNamespace(consumer=_Consumer({}), producer=producer)
    shell = _shell(app, config=config(), customers=customers, control=control,
                   metrics=PipelineMetrics())  # fmt: skip
    shell.scan_chunk = 3
    if revoke_after_first_chunk is not None:
        scan = customers.scan

        def scan_revoking(partitions: list[int], *, chunk: int) -> Iterator[list]:
            for i, part in enumerate(scan(partitions, chunk=chunk)):
                yield part
                if i == 0:
                    shell.forget({revoke_after_first_chunk})

        customers.scan = scan_revoking  # type: ignore[method-assign]
    asyncio.run(shell.prepare({0, 1}))
    return shell, producer.sent, driver


def test_prepare_starts_the_assigned_partitions_and_resends_each_outbox_once() -> None:
    """The direct drain starts newly assigned partitions before their first fetch (so /readyz
    waits for the due-index rebuild): every unacknowledged decision is re-sent once, and a
    second prepare of the same partitions does nothing."""
    import asyncio

    from stream.core.state import decode

    shell, topics, driver = _started_shell()
    assert shell.started({0, 1}) and not shell.started({0, 1, 2})
    outboxes = sorted(s.nudge_id for v in driver.customers.values() for s in decode(v).outbox)
    assert outboxes
    resent = sorted(json.loads(m["value"])["nudge_id"] for m in topics["decisions"])
    assert resent == outboxes
    assert shell.metrics.resent._value.get() == len(outboxes)
    before = {name: len(sent) for name, sent in topics.items()}
    asyncio.run(shell.prepare({0, 1}))
    assert {name: len(sent) for name, sent in topics.items()} == before


def test_a_partition_revoked_while_its_table_is_read_is_not_started() -> None:
    shell, _topics, _driver = _started_shell(revoke_after_first_chunk=1)
    assert shell.started({0}) and not shell.started({1})


def test_the_shell_runs_full_collections_on_the_collectors_schedule() -> None:
    """An idle fetch runs a due full collection, a batch only once the whole interval has
    passed, and every one is observed in the worker's metrics."""
    import asyncio

    from stream.adapter.collector import IDLE_AFTER_S, CycleCollector

    shell, _topics, _driver = _started_shell()
    now = [0.0]
    runs: list[int] = []
    collector = CycleCollector(
        interval_s=600, clock=lambda: now[0], collect=lambda gen: runs.append(gen) or 0,
        observe=shell.metrics.observe_full_collection,
    )  # fmt: skip
    collector.scheduled = True  # as `install` leaves it, without touching this process's gc
    shell.collector = collector
    asyncio.run(shell.idle())
    assert runs == []
    now[0] = IDLE_AFTER_S
    asyncio.run(shell.idle())
    assert runs == [2]
    now[0] += IDLE_AFTER_S
    asyncio.run(shell.handle_records([]))  # a batch: not yet the whole interval
    assert runs == [2]
    now[0] += 600
    asyncio.run(shell.handle_records([]))
    assert runs == [2, 2]
    assert _histogram_count(shell.metrics, "engage_gc_full_collection_seconds") == 2


def _histogram_count(metrics: Any, name: str) -> float:
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == f"{name}_count":
                return sample.value
    raise AssertionError(f"{name} not exported")


def test_write_behind_returns_records_to_acknowledge_only_once_their_states_are_written() -> None:
    """With a write interval, a batch's decisions are sent at once but its states wait: the
    batch returns nothing to acknowledge, the table does not have the customer yet; the idle
    fetch writes it once (however many events changed it) and returns every record held."""
    import asyncio

    from faust.types import TP

    from stream.core.engine import Record
    from stream.core.state import decode
    from stream.telemetry.metrics import PipelineMetrics
    from tests.core.test_engine import config
    from tests.factory import event, raw

    topic = "t.clicks"
    consumer = _Consumer({TP(topic, 1): 0})
    app = SimpleNamespace(consumer=consumer, producer=_Producer())
    customers = _Table()
    shell = _shell(app, config=config("follow"), customers=customers, control=_Table(),
                   metrics=PipelineMetrics(), write_interval_s=3600)  # fmt: skip

    def record(offset: int) -> Record:
        value = raw(event("click", "cara", days=offset, event_id=f"e-{offset}"))
        return Record(topic, 1, offset, 0, b"cara", value)

    assert asyncio.run(shell.handle_records([record(0), record(1)])) == []
    assert asyncio.run(shell.handle_records([record(2)])) == []
    assert b"cara" not in customers.data
    assert shell.metrics.state_writes._value.get() == 0
    done = asyncio.run(shell.idle())
    assert [r.offset for r in done] == [0, 1, 2]
    assert decode(customers.data[b"cara"]).counts == {"click": 3}
    assert shell.metrics.state_writes._value.get() == 1, "one write for three events"
    assert asyncio.run(shell.idle()) == []
    assert shell.metrics.state_writes._value.get() == 1
