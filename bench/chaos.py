"""Fault injection against the local stack: crashes, rebalances, a broker outage, hostile input.

Every experiment runs real `engage worker` processes (see stream/tools/processes.py) on a
fresh topic namespace of the local Kafka, feeds them persona traffic from `engage emit --out`,
injects one kind of fault and compares the outcome with what must hold:

  a  one worker, `kill -9` five times under load, restarted each time: every profile equals a
     clean run's field by field (time-dependent fields aside), every clean-run decision is
     present with its status, duplicates are only same-nudge_id re-sends; restart-to-ready times
  b  two workers, one killed at 40 %, a third started 20 s later: the same comparison, and how
     long the killed worker's partitions stood still
  c  a second worker joins a running one: the first worker's /readyz is 200 again within a bound
  d  `engage replay` whose worker is killed after the declarations and restarted: decisions
     byte-identical to an uninterrupted replay
  e  a 30 s broker outage under `engage emit` (on a private broker, never the shared one):
     every message the emitter counts as sent is on the topics, and the only extra records are
     second copies of its re-sends (an acknowledgement lost with the connection)
  f  hostile messages of every kind among valid ones: each in the DLQ with its exact reason and
     its bytes unchanged, every valid event folded, the worker never restarts

With `--brokers 3` everything runs on a private three-broker cluster (topics with 3 replicas,
min.insync.replicas 2, producers acks=all and idempotent; /tmp/chaos-cluster, ports 49092+),
and three more experiments fault the cluster itself:

  g  kill -9 the broker leading the busiest input partition under load
  h  a rolling restart of every broker (controlled shutdown, start, replicas in sync) under load
  i  a second worker joins; during the rebalance the group coordinator's broker is killed -9

each compared with a clean run like a and b, with the longest pause of the workers' progress
(the time to resume). PASS means nothing lost and no decision under a new id.

    .venv/bin/python bench/chaos.py [--only a,b,...] [--events N] [--hostile N] [--brokers 3]
                                    [--guarantee at_least_once|exactly_once|both]

`--guarantee` is the workers' ENGAGE_PROCESSING_GUARANTEE; `both` runs every chosen experiment
once per guarantee, each faulted run compared with the same clean run (one at_least_once
worker, no fault). e runs no worker: it runs once whatever the guarantee. This tree's workers
refuse exactly_once (it lost events in b; docs/reliability.md has the figures): it runs only
with `--worker-root` pointing at an export of a commit before its removal, which is how those
figures can be measured again.

Prints each experiment's figures and a PASS/FAIL verdict with the numbers, then a summary
table (one row per experiment and guarantee); exits 1 when an experiment fails. Worker logs
stay in the printed directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from schemas.events import TOPIC_SUFFIX  # noqa: E402
from stream.adapter.faust_private import refresh_metadata  # noqa: E402
from stream.core.state import CustomerState  # noqa: E402
from stream.tools.hostile import generate, interleave  # noqa: E402
from stream.tools.processes import Worker, read_all, table_state, unique, wait_for  # noqa: E402
from stream.topic_names import (  # noqa: E402
    customers_changelog,
    decisions_topic,
    dlq_topic,
    input_topic,
    namespaced,
)

INPUT_SUFFIXES = sorted(set(TOPIC_SUFFIX.values()))
#: CustomerState fields left out of the profile comparison: ritual internals move with the
#: partition clock (decisions are compared on their own), the rest is bookkeeping.
IGNORED_FIELDS = {"r", "partition", "recent_ids"}
IGNORED_PATTERN = re.compile(r"offset|outbox|pending_sends", re.IGNORECASE)
GUARANTEES = ("at_least_once", "exactly_once")
#: The clean reference run's guarantee, whatever the faulted runs use: a faulted exactly_once
#: run must reproduce what an undisturbed at_least_once worker decides.
REFERENCE_GUARANTEE = "at_least_once"
#: Experiments that run no `engage worker` (the guarantee does not apply to them).
WITHOUT_WORKER = {"e"}


# --- results ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One experiment's verdict and the figures it rests on."""

    name: str
    title: str
    guarantee: str = "-"  # the workers' processing guarantee ("-": the experiment runs none)
    passed: bool = False
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, failure: str) -> None:
        """Record one condition of the verdict."""
        if not ok:
            self.failures.append(failure)

    def finish(self) -> Outcome:
        self.passed = not self.failures
        return self

    def print(self) -> None:
        verdict = "PASS" if self.passed else "FAIL"
        print(f"\n[{self.name}, {self.guarantee}] {self.title}: {verdict}")
        for key, value in self.figures.items():
            print(f"    {key:<38} {_fmt(value)}")
        for failure in self.failures:
            print(f"    FAIL: {failure}")


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "-"
    return str(value)


@dataclass
class ChaosWorker(Worker):
    """A harness worker that may run another source tree (`--worker-root`: e.g. an export of
    main, for the "before" figures); everything else is stream/tools/processes.py's Worker."""

    root: Path = ROOT

    @property
    def env(self) -> dict[str, str]:
        """The harness's environment, the broker list in Faust's form (`;` between brokers)."""
        return {**super().env, "ENGAGE_BROKER": "kafka://" + self.bootstrap.replace(",", ";")}

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker"], cwd=self.root, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def start(self, timeout: float = 90.0) -> ChaosWorker:
        self.spawn()
        wait_for(self.ready, timeout=timeout, what=f"worker {self.app_id} /readyz")
        return self


@dataclass
class Lab:
    """Where experiments run: broker, sizes, and a directory for logs and data."""

    bootstrap: str
    events: int = 3000
    customers: int = 150
    partitions: int = 8
    seed: int = 7
    mode: str = "follow"
    hostile: int = 2000
    valid: int = 1000
    heavy_cap: int = 40
    timeout: float = 600.0
    worker_root: Path = ROOT
    worker_env: dict[str, str] = field(default_factory=dict)  # e.g. {"ENGAGE_DRAIN": "lean"}
    guarantee: str = "at_least_once"  # the faulted workers' ENGAGE_PROCESSING_GUARANTEE
    cluster: Cluster | None = None  # --brokers N > 1: the private cluster g, h and i fault
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="engage-chaos-")))
    # The traffic and the clean run, computed once and shared by the copies of this lab made
    # for another guarantee (`dataclasses.replace` copies the reference to the same dict).
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """The workers' extra environment: `worker_env` and the processing guarantee."""
        return {**self.worker_env, "ENGAGE_PROCESSING_GUARANTEE": self.guarantee}

    def worker(self, app_id: str, namespace: str, **env: str) -> ChaosWorker:
        """A worker of this lab (not started); Redis off, quiet logs, the lab's guarantee."""
        return ChaosWorker(
            bootstrap=self.bootstrap,
            app_id=app_id,
            namespace=namespace,
            log_path=self.workdir / f"{unique(app_id)}.log",
            partitions=self.partitions,
            extra_env={
                "ENGAGE_MODE": self.mode,
                "ENGAGE_REDIS_ENABLED": "false",
                "ENGAGE_LOG_LEVEL": "warning",
                **self.env,
                **env,
            },
            root=self.worker_root,
        )

    def lines(self) -> list[bytes]:
        """The lab's persona traffic (cached): the first `events` lines of a seeded emit run."""
        if "lines" not in self.cache:
            self.cache["lines"] = persona_lines(
                self.events, self.customers, self.seed, self.workdir
            )
        lines: list[bytes] = self.cache["lines"]
        return lines


# --- traffic and Kafka -------------------------------------------------------------------------


def persona_lines(n: int, customers: int, seed: int, workdir: Path, days: int = 40) -> list[bytes]:
    """The first n events of a seeded `engage emit --out` run whose simulated days end now."""
    start = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = workdir / f"persona-{seed}-{customers}.jsonl"
    subprocess.run(
        [sys.executable, "-m", "stream", "emit", "--customers", str(customers), "--days",
         str(days), "--start", start, "--seed", str(seed), "--out", str(path), "--quiet"],
        check=True, cwd=ROOT,
    )  # fmt: skip
    with path.open("rb") as fh:
        return [line.rstrip(b"\n") for _, line in zip(range(n), fh, strict=False)]


def routed(namespace: str, lines: Iterable[bytes]) -> list[tuple[str, bytes | None, bytes | None]]:
    """(topic, key, value) of event lines, keyed by customer_id (SPEC §1)."""
    out: list[tuple[str, bytes | None, bytes | None]] = []
    for line in lines:
        evt = json.loads(line)
        out.append((input_topic(namespace, evt["type"]), evt["customer_id"].encode(), line))
    return out


async def _produce(bootstrap: str, messages: list[tuple[str, bytes | None, bytes | None]]) -> list:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        max_request_size=2 * 1024 * 1024,
        linger_ms=10,
    )
    await producer.start()
    try:
        metas = []
        for i in range(0, len(messages), 2000):
            futures = [await producer.send(t, value=v, key=k) for t, k, v in messages[i : i + 2000]]
            metas.extend(await asyncio.gather(*futures))
        return metas
    finally:
        await producer.stop()


def produce(bootstrap: str, messages: list[tuple[str, bytes | None, bytes | None]]) -> list:
    """Send in order, wait for every acknowledgement; returns each message's RecordMetadata."""
    return asyncio.run(_produce(bootstrap, messages))


def ensure_topics(lab: Lab, namespace: str, bootstrap: str | None = None) -> None:
    """The namespace's topics, created with the lab's partition count before anything runs."""
    from stream.adapter.topics import ensure_topics as ensure
    from stream.settings import Settings

    settings = Settings(
        broker="kafka://" + (bootstrap or lab.bootstrap).replace(",", ";"),
        app_id=namespace,  # every experiment's app id is its namespace
        topic_namespace=namespace,
        partitions=lab.partitions,
    )
    asyncio.run(ensure(settings))


async def _offsets(bootstrap: str, group: str | None, topics: list[str]) -> tuple[dict, dict]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await refresh_metadata(consumer)
                parts = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        ends = await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
    committed: dict = {}
    if group is not None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            raw = await admin.list_consumer_group_offsets(group)
            committed = {tp: meta.offset for tp, meta in raw.items() if tp.topic in topics}
        finally:
            await admin.close()
    return ends, committed


def offsets(bootstrap: str, group: str | None, topics: list[str]) -> tuple[dict, dict]:
    """(end offsets, the group's committed offsets) of every partition of `topics`."""
    return asyncio.run(_offsets(bootstrap, group, topics))


def backlog(lab: Lab, app_id: str, namespace: str) -> int:
    """Input messages not yet committed by the app's consumer group."""
    topics = [namespaced(namespace, s) for s in INPUT_SUFFIXES]
    ends, committed = offsets(lab.bootstrap, app_id, topics)
    return sum(max(end - committed.get(tp, 0), 0) for tp, end in ends.items())


def _backlog_detail(lab: Lab, app_id: str, namespace: str) -> dict[str, int]:
    """Uncommitted input messages per topic-partition, where there are any."""
    topics = [namespaced(namespace, s) for s in INPUT_SUFFIXES]
    ends, committed = offsets(lab.bootstrap, app_id, topics)
    return {
        f"{tp.topic.rsplit('.', 1)[-1]}[{tp.partition}]": end - committed.get(tp, 0)
        for tp, end in sorted(ends.items())
        if end > committed.get(tp, 0)
    }


def wait_settled(
    lab: Lab,
    app_id: str,
    namespace: str,
    *,
    alive: Callable[[], bool],
    timeout: float,
    stall: float = 150.0,
) -> float | None:
    """Until every input message is committed and the changelog and decision topics stop
    growing (3 s); returns the seconds waited, or None at the deadline or when the backlog
    has not moved for `stall` seconds (a stalled stream)."""
    started = time.monotonic()
    outputs = [customers_changelog(app_id), decisions_topic(namespace)]
    last: tuple[int, int] | None = None
    stable_since = 0.0
    left, moved = -1, started
    while time.monotonic() - started < timeout:
        if not alive():
            return None
        pending = backlog(lab, app_id, namespace)
        if pending != left:
            left, moved = pending, time.monotonic()
        elif pending and time.monotonic() - moved > stall:
            return None
        if pending == 0:
            ends, _ = offsets(lab.bootstrap, None, outputs)
            sums = tuple(sum(v for tp, v in ends.items() if tp.topic == t) for t in outputs)
            now = time.monotonic()
            if sums != last:
                last, stable_since = sums, now
            elif now - stable_since >= 3.0:
                return now - started
        time.sleep(0.5)
    return None


def kill9(worker: Worker) -> None:
    """SIGKILL the worker's process group and reap it: no shutdown code runs."""
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(timeout=30)


def restart(worker: Worker, timeout: float) -> float:
    """Start the worker again; seconds until its /readyz answers 200."""
    started = time.monotonic()
    worker.start(timeout=timeout)
    return time.monotonic() - started


def consumed(worker: Worker) -> float:
    """Input messages this worker process has read (0 when it cannot answer); falls back to
    the processed count for a worker that does not export the consumed one."""
    try:
        return worker.metric("engage_events_consumed_total") or worker.metric(
            "engage_events_processed_total"
        )
    except OSError:
        return 0.0


# --- comparisons -------------------------------------------------------------------------------


def _normal(value: Any) -> Any:
    """A value compared regardless of the order its parts were folded in (topics interleave
    differently from run to run) and of float rounding."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return sorted((_normal(v) for v in value), key=repr)
    if isinstance(value, msgspec.Struct):
        return _normal(msgspec.structs.asdict(value))
    return value


def profile_fields(state: CustomerState) -> dict[str, Any]:
    """The comparable fields of a customer's state."""
    return {
        name: _normal(value)
        for name, value in msgspec.structs.asdict(state).items()
        if name not in IGNORED_FIELDS and not IGNORED_PATTERN.search(name)
    }


def compare_profiles(
    clean: dict[str, CustomerState], other: dict[str, CustomerState]
) -> dict[str, Any]:
    """Customers and fields that differ from the clean run."""
    wrong: list[str] = []
    by_field: Counter[str] = Counter()
    for cid in sorted(set(clean) | set(other)):
        a = profile_fields(clean[cid]) if cid in clean else {}
        b = profile_fields(other[cid]) if cid in other else {}
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if diff:
            wrong.append(cid)
            by_field.update(diff)
    events = sum(sum(s.counts.values()) for s in other.values())
    return {
        "customers": len(other),
        "customers wrong": len(wrong),
        "fields wrong": dict(by_field.most_common(6)),
        "events in profiles": events,
        "events in clean profiles": sum(sum(s.counts.values()) for s in clean.values()),
        "_examples": wrong[:3],
    }


def compare_decisions(clean: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    """Clean-run decisions missing or with another status; extras; same-nudge_id re-sends."""
    ref = {d["nudge_id"]: d for d in clean}
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in other:
        seen[d["nudge_id"]].append(d)
    missing = [n for n in ref if n not in seen]
    status = [n for n in ref if n in seen and seen[n][0]["status"] != ref[n]["status"]]
    extra = [n for n in seen if n not in ref]
    resends = sum(len(v) - 1 for v in seen.values())
    inconsistent = sum(1 for v in seen.values() if any(x != v[0] for x in v[1:]))
    delivered_missing = sum(1 for n in missing if ref[n]["status"] == "delivered")
    return {
        "clean decisions": len(ref),
        "decisions missing": len(missing),
        "delivered nudges missing": delivered_missing,
        "decisions with another status": len(status),
        "decisions not in the clean run": len(extra),
        "same-nudge_id re-sends": resends,
        "re-sends that differ": inconsistent,
    }


def decisions(lab: Lab, namespace: str, suffix: str = "nudge-decisions") -> list[dict[str, Any]]:
    return [json.loads(m.value) for m in read_all(lab.bootstrap, f"{namespace}.{suffix}")]


def resend_metric(worker: Worker) -> float | None:
    """The worker's own count of decision re-sends, if it exports one."""
    try:
        _, body = worker.get("/metrics")
    except OSError:
        return None
    total, found = 0.0, False
    for line in body.decode().splitlines():
        if line.startswith("engage_") and "resen" in line.split("{")[0] and "_total" in line:
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


def judge_run(out: Outcome, clean: dict[str, Any], lab: Lab, app_id: str, namespace: str) -> None:
    """Profiles and decisions of a faulted run against the clean run, into `out`."""
    states = table_state(lab.bootstrap, customers_changelog(app_id))
    prof = compare_profiles(clean["states"], states)
    examples = prof.pop("_examples")
    out.figures.update(prof)
    dec = compare_decisions(clean["decisions"], decisions(lab, namespace))
    out.figures.update(dec)
    nud = compare_decisions(clean["nudges"], decisions(lab, namespace, "nudges"))
    out.figures["nudges sent twice (same nudge_id)"] = nud["same-nudge_id re-sends"]
    out.check(
        prof["customers wrong"] == 0 and prof["customers"] == len(clean["states"]),
        f"{prof['customers wrong']} of {len(clean['states'])} profiles differ from the clean run "
        f"({prof['events in profiles']:,} events folded vs {prof['events in clean profiles']:,};"
        f" e.g. {', '.join(examples)})",
    )
    out.check(
        dec["decisions missing"] == 0 and dec["decisions with another status"] == 0,
        f"{dec['decisions missing']} clean-run decisions missing "
        f"({dec['delivered nudges missing']} delivered), "
        f"{dec['decisions with another status']} with another status",
    )
    out.check(
        dec["decisions not in the clean run"] == 0 and dec["re-sends that differ"] == 0,
        f"{dec['decisions not in the clean run']} decisions not in the clean run, "
        f"{dec['re-sends that differ']} re-sends that differ from their first send",
    )


# --- the clean reference ----------------------------------------------------------------------


def clean_run(lab: Lab) -> dict[str, Any]:
    """One worker, no fault, with the reference guarantee (at_least_once, whatever the lab's):
    the profiles and decisions every faulted run, of either guarantee, must reproduce."""
    if "clean" in lab.cache:
        clean: dict[str, Any] = lab.cache["clean"]
        return clean
    namespace = app_id = unique("chaos-clean")
    ensure_topics(lab, namespace)
    produce(lab.bootstrap, routed(namespace, lab.lines()))
    worker = lab.worker(app_id, namespace, ENGAGE_PROCESSING_GUARANTEE=REFERENCE_GUARANTEE)
    t0 = time.monotonic()
    worker.start(timeout=300)
    ready = time.monotonic() - t0
    try:
        took = wait_settled(lab, app_id, namespace, alive=worker.alive, timeout=lab.timeout)
        if took is None:
            raise RuntimeError(f"the clean run did not finish; see {worker.log_path}")
    finally:
        worker.stop()
    clean = lab.cache["clean"] = {
        "states": table_state(lab.bootstrap, customers_changelog(app_id)),
        "decisions": decisions(lab, namespace),
        "nudges": decisions(lab, namespace, "nudges"),
        "ready_s": ready,
        "seconds": took,
    }
    dec = compare_decisions(clean["decisions"], clean["decisions"])
    print(
        f"clean run ({REFERENCE_GUARANTEE}): {len(lab.lines()):,} events, "
        f"{len(clean['states'])} customers, {dec['clean decisions']} decisions, "
        f"ready in {ready:.1f} s, settled in {took:.1f} s"
    )
    return clean


# --- a: kill -9 five times ----------------------------------------------------------------------


def experiment_a(lab: Lab, kills: int = 5) -> Outcome:
    """One worker killed with SIGKILL `kills` times under load, restarted each time."""
    out = Outcome("a", f"one worker, kill -9 x{kills} under load, restarted each time")
    clean = clean_run(lab)
    namespace = app_id = unique("chaos-a")
    ensure_topics(lab, namespace)
    records = list(routed(namespace, lab.lines()))
    total = len(records)
    # A tenth up front, the rest paced over about 12 s per kill (a restart takes about 10 s),
    # so every kill comes while input is still arriving, however fast the worker is.
    produce(lab.bootstrap, records[: total // 10])
    rate = max(50.0, (total - total // 10) / (kills * 12.0))
    feeder = threading.Thread(
        target=_paced_produce,
        args=(lab.bootstrap, records[total // 10 :], rate, lab.partitions),
        daemon=True,
    )
    worker = lab.worker(app_id, namespace)
    per_life = max(total // (kills + 2), 1)
    ready_times: list[float] = [restart(worker, 300)]
    feeder.start()
    out.figures["input paced at events/s"] = rate

    def finished() -> bool:
        return not feeder.is_alive() and backlog(lab, app_id, namespace) == 0

    counted: list[float | None] = []  # the worker's re-send metric, per process, before a kill
    done = 0
    try:
        for _ in range(kills):
            try:
                wait_for(
                    lambda: consumed(worker) >= per_life or finished(),
                    timeout=lab.timeout,
                    interval=0.1,
                    what="load before the kill",
                )
            except AssertionError:
                out.failures.append("the worker stopped making progress between kills")
                break
            if finished():
                break
            counted.append(resend_metric(worker))  # each process counts its own
            kill9(worker)
            done += 1
            ready_times.append(restart(worker, 300))
        feeder.join(timeout=lab.timeout)
        took = wait_settled(lab, app_id, namespace, alive=worker.alive, timeout=lab.timeout)
        out.figures["kills under load"] = done
        out.figures["restart-to-ready s (first start, then each restart)"] = ready_times
        out.figures["max restart-to-ready s"] = max(ready_times[1:] or [0.0])
        out.figures["seconds to settle after the last restart"] = (
            "did not settle" if took is None else took
        )
        if took is None:
            out.figures["backlog left (topic[partition]: messages)"] = _backlog_detail(
                lab, app_id, namespace
            )
        out.check(took is not None, f"input not all processed within {lab.timeout:.0f} s")
        out.check(done == kills, f"only {done} kills happened under load")
        judge_run(out, clean, lab, app_id, namespace)
        counted.append(resend_metric(worker))
        known = [c for c in counted if c is not None]
        out.figures["re-sends counted by the worker (all its processes)"] = (
            sum(known) if known else "no metric"
        )
    finally:
        worker.stop()
    return out.finish()


# --- b: a kill in a group, a third worker joins ---------------------------------------------


async def _produce_in_order(
    bootstrap: str, messages: list[tuple[str, bytes | None, bytes | None]], partitions: int
) -> None:
    """Send keyed messages so that each partition number's messages are written in their
    order across topics: a message goes only once its partition's earlier messages on other
    topics are acknowledged (the partitions' lanes run side by side).

    A producer keeps no order across topic-partitions: a batch made later (a survey) can be
    written after a batch made earlier that kept filling (clicks of later event times). A
    worker reading in between rightly lets its clock pass the survey, not yet written (SPEC
    §2), and decides otherwise than the clean run, whose input was all written first: an
    experiment comparing with it must write in order."""
    from stream.core.partitioning import expected_partition

    lanes: dict[int, list[tuple[str, bytes | None, bytes | None]]] = defaultdict(list)
    for message in messages:
        key = message[1]
        assert key is not None, "ordered messages are keyed"
        lanes[expected_partition(key, partitions)].append(message)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
        max_request_size=2 * 1024 * 1024, linger_ms=2,
    )  # fmt: skip

    async def lane(partition: int, items: list[tuple[str, bytes | None, bytes | None]]) -> None:
        topic, sent = None, []
        for t, k, v in items:
            if sent and t != topic:
                await asyncio.gather(*sent)
                sent = []
            topic = t
            sent.append(await producer.send(t, value=v, key=k, partition=partition))
        await asyncio.gather(*sent)

    await producer.start()
    try:
        await asyncio.gather(*(lane(p, items) for p, items in lanes.items()))
    finally:
        await producer.stop()


def _paced_produce(bootstrap: str, records: list[Any], rate: float, partitions: int) -> None:
    """Produce `records` at about `rate` per second, in slices of half a second, each
    partition's records written in order across topics (`_produce_in_order`)."""
    step = max(1, int(rate / 2))
    started = time.monotonic()
    for i in range(0, len(records), step):
        asyncio.run(_produce_in_order(bootstrap, records[i : i + step], partitions))
        ahead = started + (i + step) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)  # pacing the load, not waiting for a condition


def experiment_b(lab: Lab) -> Outcome:
    """Two workers; one killed at 40 %; a third started 20 s later."""
    out = Outcome("b", "two workers, one kill -9 at 40 %, a third joins 20 s later")
    clean = clean_run(lab)
    namespace = app_id = unique("chaos-b")
    ensure_topics(lab, namespace)
    records = list(routed(namespace, lab.lines()))
    total = len(records)
    # A fifth up front, the rest paced while the workers run, so the kill at 40 % leaves a
    # backlog on the killed worker's partitions however fast the workers are.
    produce(lab.bootstrap, records[: total // 5])
    feeder = threading.Thread(
        target=_paced_produce,
        args=(lab.bootstrap, records[total // 5 :], 2000.0, lab.partitions),
        daemon=True,
    )
    workers = [lab.worker(app_id, namespace), lab.worker(app_id, namespace)]
    try:
        _start_all(workers, 300)
        feeder.start()
        wait_for(
            lambda: (
                total - backlog(lab, app_id, namespace) >= 0.4 * total
                or sum(consumed(w) for w in workers) >= 0.4 * total
            ),
            timeout=lab.timeout,
            interval=0.1,
            what="40 % of the input",
        )
        changelog = customers_changelog(app_id)
        inputs = [namespaced(namespace, s) for s in INPUT_SUFFIXES]
        kill9(workers[0])
        killed_at = time.monotonic()
        stalled = _partitions_with_backlog(lab, app_id, inputs)
        marks, _ = offsets(lab.bootstrap, None, [changelog])
        resumed: dict[int, float] = {}
        third = lab.worker(app_id, namespace)
        third_started = False
        third_ready: float | None = None
        while time.monotonic() - killed_at < lab.timeout:
            if not third_started and time.monotonic() - killed_at >= 20:
                third.spawn()  # not waited for: the partitions' progress is watched meanwhile
                third_started = True
            if third_started and third_ready is None and third.ready():
                third_ready = time.monotonic() - killed_at
            ends, _ = offsets(lab.bootstrap, None, [changelog])
            for tp, end in ends.items():
                if tp.partition not in resumed and end > marks.get(tp, 0):
                    resumed[tp.partition] = time.monotonic() - killed_at
            left = _partitions_with_backlog(lab, app_id, inputs)
            for p in stalled - left:  # caught up: re-read events already folded write nothing
                resumed.setdefault(p, time.monotonic() - killed_at)
            if third_started and stalled <= set(resumed) | (stalled - left):
                break
            time.sleep(0.25)
        waits = {p: resumed.get(p) for p in sorted(stalled)}
        recovery = max((v for v in waits.values() if v is not None), default=0.0)
        out.figures["partitions with backlog at the kill"] = len(stalled)
        out.figures["s until each resumed (changelog grew or input done)"] = {
            p: ("never" if v is None else round(v, 1)) for p, v in waits.items()
        }
        out.figures["recovery s (slowest partition)"] = recovery
        workers.append(third)
        if third_started and third_ready is None:
            wait_for(third.ready, timeout=300, what="the third worker's /readyz")
            third_ready = time.monotonic() - killed_at
        out.figures["third worker ready, s after the kill"] = third_ready or "not started"
        feeder.join(timeout=lab.timeout)
        alive = [w for w in workers if w.alive()]
        took = wait_settled(lab, app_id, namespace, alive=lambda: bool(alive), timeout=lab.timeout)
        out.figures["seconds to settle"] = "did not settle" if took is None else took
        out.check(took is not None, f"input not all processed within {lab.timeout:.0f} s")
        out.check(
            all(v is not None for v in waits.values()) and recovery <= 15.0,
            f"the killed worker's partitions resumed after {recovery:.1f} s (goal 15 s)"
            + ("; some never did" if any(v is None for v in waits.values()) else ""),
        )
        judge_run(out, clean, lab, app_id, namespace)
    finally:
        for w in workers:
            w.stop()
    return out.finish()


def _start_all(workers: list[ChaosWorker], timeout: float) -> None:
    """Start several workers at once (so they form one group), then wait for all to be ready."""
    for w in workers:
        w.spawn()
    for w in workers:
        wait_for(w.ready, timeout=timeout, what=f"worker {w.app_id} /readyz")


def _partitions_with_backlog(lab: Lab, app_id: str, inputs: list[str]) -> set[int]:
    ends, committed = offsets(lab.bootstrap, app_id, inputs)
    return {tp.partition for tp, end in ends.items() if committed.get(tp, 0) < end}


# --- c: a second worker joins -----------------------------------------------------------------


def experiment_c(lab: Lab, bound: float = 30.0) -> Outcome:
    """A running worker's /readyz while a second one joins its group: once when the first has
    processed everything (its table to hand over is complete), once under load (a third of
    the input read, the changelog still growing)."""
    out = Outcome("c", f"a second worker joins: the first is ready again within {bound:.0f} s")
    for label, under_load in (("at rest", False), ("under load", True)):
        unready, second_ready = _join(lab, under_load=under_load, watch=max(bound * 4, 120))
        out.figures[f"{label}: first worker not ready for s"] = (
            "never ready again" if unready is None else unready
        )
        out.figures[f"{label}: second worker ready after s"] = (
            "never" if second_ready is None else second_ready
        )
        out.check(
            unready is not None and unready <= bound,
            f"{label}: the first worker's /readyz "
            + ("never returned to 200" if unready is None else f"was 503 for {unready:.1f} s"),
        )
        out.check(second_ready is not None, f"{label}: the second worker never became ready")
    return out.finish()


def _join(lab: Lab, *, under_load: bool, watch: float) -> tuple[float | None, float | None]:
    """(longest time the first worker was not ready, seconds until the second was ready)
    after a second worker joins, in seconds; None for "never" within `watch` seconds."""
    namespace = app_id = unique("chaos-c")
    ensure_topics(lab, namespace)
    produce(lab.bootstrap, routed(namespace, lab.lines()))
    first = lab.worker(app_id, namespace)
    second = lab.worker(app_id, namespace)
    total = len(lab.lines())
    try:
        first.start(timeout=300)
        if under_load:
            wait_for(
                lambda: consumed(first) >= total / 3 or backlog(lab, app_id, namespace) == 0,
                timeout=lab.timeout,
                interval=0.1,
                what="a third of the input",
            )
        else:
            wait_settled(lab, app_id, namespace, alive=first.alive, timeout=lab.timeout)
        second.spawn()
        joined = time.monotonic()
        not_ready_since: float | None = None
        ready_again: float | None = None
        second_ready: float | None = None
        longest = 0.0
        while time.monotonic() - joined < watch:
            now = time.monotonic() - joined
            if not first.ready():
                if not_ready_since is None or ready_again is not None:
                    not_ready_since, ready_again = now, None
            elif not_ready_since is not None and ready_again is None:
                ready_again = now
                longest = max(longest, ready_again - not_ready_since)
            if second_ready is None and second.ready():
                second_ready = now
            settled = not_ready_since is None or ready_again is not None
            if second_ready is not None and settled and now > second_ready + 5:
                break
            time.sleep(0.2)
        if not_ready_since is None:
            return 0.0, second_ready
        if ready_again is None:
            return None, second_ready
        return longest, second_ready
    finally:
        second.stop()
        first.stop()


# --- d: a replay whose worker is killed -----------------------------------------------------


def experiment_d(lab: Lab, replay_timeout: float = 300.0) -> Outcome:
    """`engage replay`, worker killed after the declarations and restarted, vs uninterrupted.
    The replay's workers inherit this process's environment: the lab's is set meanwhile."""
    with _environ(lab.env):
        return _replay_killed(lab, replay_timeout)


@contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """These environment variables set for the duration, then as they were."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _replay_killed(lab: Lab, replay_timeout: float) -> Outcome:
    import stream.tools.replay as replay_tool
    from stream.settings import Settings
    from stream.tools.replay import ReplayRun, canonical_lines, run_replay

    replay_tool.ROOT = lab.worker_root  # its workers run from --worker-root too

    out = Outcome("d", "replay: worker kill -9 after the declarations, restarted")
    lines = lab.lines()

    def settings() -> Settings:
        ns = unique("chaos-d")
        return Settings(
            broker=f"kafka://{lab.bootstrap}",
            app_id=ns,
            topic_namespace=ns,
            partitions=lab.partitions,
        )

    first_done: list[float] = []

    def watch(run: ReplayRun) -> None:
        # How long after its declarations an uninterrupted replay reports a first partition.
        declared = time.monotonic()
        while time.monotonic() - declared < 60 and not _replay_done(lab.bootstrap, run):
            time.sleep(0.02)
        first_done.append(time.monotonic() - declared)

    t0 = time.monotonic()
    reference = list(
        canonical_lines(
            run_replay(lines, settings=settings(), timeout=lab.timeout, on_declared=watch)
        )
    )
    out.figures["uninterrupted replay s"] = time.monotonic() - t0
    out.figures["first partition done, s after the declarations"] = first_done[0]
    out.figures["decisions (uninterrupted)"] = len(reference)
    restarts: list[float] = []
    at_kill: list[int] = []

    def crash(run: ReplayRun) -> None:
        # Kill while the declarations are being handled: at a quarter of the time the
        # uninterrupted replay took to finish a first partition (no polling before: a poll of
        # the status topic takes longer than that window on a fast worker), as in the failure
        # this experiment reproduces. The partitions done are counted while it is down.
        time.sleep(min(first_done[0] / 4, 6.0))  # a point in time to kill at, not a wait
        restarts.append(run.restart_worker(
            0, kill=True, while_down=lambda: at_kill.append(_replay_done(lab.bootstrap, run))
        ))  # fmt: skip

    t0 = time.monotonic()
    try:
        crashed = list(
            canonical_lines(
                run_replay(lines, settings=settings(), timeout=replay_timeout, on_declared=crash)
            )
        )
        out.figures["killed replay s"] = time.monotonic() - t0
    except TimeoutError as exc:
        out.figures["killed replay s"] = f"did not finish in {replay_timeout:.0f} s"
        out.figures["restart-to-ready s"] = restarts
        if at_kill:
            out.figures["partitions done before the kill"] = f"{at_kill[0]} of {lab.partitions}"
        out.failures.append(f"the killed replay hung: {exc}")
        return out.finish()
    out.figures["restart-to-ready s"] = restarts
    out.figures["partitions done before the kill"] = f"{at_kill[0]} of {lab.partitions}"
    out.check(
        at_kill[0] < lab.partitions,
        "inconclusive: every partition had finished before the kill (use more --events)",
    )
    out.figures["decisions (killed)"] = len(crashed)
    same = crashed == reference
    out.figures["byte-identical"] = same
    if not same:
        a, b = set(reference), set(crashed)
        out.failures.append(f"{len(a - b)} decisions missing, {len(b - a)} differ or are extra")
    return out.finish()


def _replay_done(bootstrap: str, run: Any) -> int:
    """Partitions that reported the end of this replay so far."""
    status = run.settings.replay_status_topic
    ends, _ = offsets(bootstrap, None, [status])
    if not sum(ends.values()):
        return 0
    done = set()
    for msg in read_all(bootstrap, status):
        body = json.loads(msg.value)
        if body.get("replay_id") == run.replay_id:
            done.add(body.get("partition"))
    return len(done)


# --- e: broker outage under the emitter -------------------------------------------------------


PRIVATE_STACK = {
    "ENGAGE_DEVSTACK_DIR": "/tmp/chaos-stack",
    "ENGAGE_KAFKA_PORT": "39092",
    "ENGAGE_KAFKA_CONTROLLER_PORT": "39093",
    "ENGAGE_KAFKA_SASL_PORT": "39094",
}


def _private(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **PRIVATE_STACK}
    return subprocess.run(
        [sys.executable, "-m", "stream", "devstack", *cmd, "--only", "kafka"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _count(text: str, pattern: str) -> int | None:
    """The number the pattern's group captures in the emitter's summary (None: not there)."""
    match = re.search(pattern, text)
    return int(match.group(1).replace(",", "")) if match else None


def _private_up_again(deadline: float) -> int:
    """Start the private broker again; returns the attempts it took. A client that keeps
    reconnecting to a closed local port can connect to itself (TCP simultaneous open, the port
    being in the ephemeral range) and hold the port for a moment: retry until the bind works."""
    attempts = 0
    while True:
        attempts += 1
        if _private(["up"]).returncode == 0 or time.monotonic() > deadline:
            return attempts
        time.sleep(1.0)


def _guard_port(port: int, deadline: float) -> socket.socket | None:
    """Bind the stopped broker's port (see experiment_e), retrying while it is still held: the
    broker's last connections, or a client that reconnected to itself meanwhile. None when it
    stays held until `deadline` (the broker's restart then retries until it can bind)."""
    while True:
        guard = socket.socket()
        guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # its TIME-WAITs
        try:
            guard.bind(("127.0.0.1", port))
            return guard
        except OSError:
            guard.close()
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)  # the holder lets go within moments: try again


def experiment_e(lab: Lab, outage: float = 30.0, rate: int = 150) -> Outcome:
    """A private broker stopped for `outage` seconds while `engage emit` produces to it."""
    out = Outcome("e", f"{outage:.0f} s broker outage under engage emit (private broker)")
    bootstrap = f"127.0.0.1:{PRIVATE_STACK['ENGAGE_KAFKA_PORT']}"
    _private_up_again(deadline=time.monotonic() + 180)
    if _private(["status"]).returncode != 0:
        out.failures.append("the private broker did not start (see /tmp/chaos-stack/logs)")
        return out.finish()
    namespace = unique("chaos-e")
    emit_log = lab.workdir / f"{namespace}-emit.log"
    # Persona traffic is about 2.4 events per customer and day: enough days that the emitter,
    # capped at `rate`, is still producing well after the broker is back.
    days = max(2, int(rate * (outage + 40) / (lab.customers * 2.4)) + 1)
    env = {
        **os.environ,
        "ENGAGE_BROKER": f"kafka://{bootstrap}",
        "ENGAGE_TOPIC_NAMESPACE": namespace,
        "ENGAGE_PARTITIONS": str(lab.partitions),
    }
    emitter: subprocess.Popen[bytes] | None = None
    try:
        ensure_topics(lab, namespace, bootstrap)
        with emit_log.open("w") as log:
            emitter = subprocess.Popen(
                [sys.executable, "-m", "stream", "emit", "--customers", str(lab.customers),
                 "--days", str(days), "--seed", str(lab.seed), "--rate", str(rate),
                 "--speed", "1e9", "--no-feedback", "--connect-timeout", "120"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            time.sleep(8)  # the emitter is producing steadily
            stopped = _private(["down"])
            down_at = time.monotonic()
            out.figures["broker stopped"] = stopped.returncode == 0
            # While the broker is down its port stays bound here (without listening: clients
            # get "connection refused", as from a stopped broker). Otherwise a client that
            # keeps reconnecting can be handed the port as its own ephemeral port, connect to
            # itself and keep the broker from binding it again.
            guard = _guard_port(int(PRIVATE_STACK["ENGAGE_KAFKA_PORT"]), down_at + outage)
            out.figures["port guarded during the outage"] = guard is not None
            while time.monotonic() - down_at < outage:
                time.sleep(0.5)
            os.kill(emitter.pid, signal.SIGSTOP)  # no reconnect while the port is unguarded
            if guard is not None:
                guard.close()
            try:
                back = _private_up_again(deadline=time.monotonic() + 180)
            finally:
                os.kill(emitter.pid, signal.SIGCONT)
            out.figures["outage s (broker down, then starting)"] = time.monotonic() - down_at
            out.figures["broker start attempts"] = back
            try:
                rc = emitter.wait(timeout=lab.timeout)
            except subprocess.TimeoutExpired:
                emitter.kill()
                rc = None
        text = emit_log.read_text(errors="replace")
        out.figures["emitter exit code"] = "timeout" if rc is None else rc
        # The headline counts what Kafka acknowledged; anything given up is reported apart.
        events = _count(text, r"\): ([\d,]+) events, [\d,]+ bad messages")
        bad = _count(text, r"\): [\d,]+ events, ([\d,]+) bad messages")
        reported = None if events is None or bad is None else events + bad
        unsent = _count(text, r"([\d,]+) messages could not be confirmed") or 0
        resent = _count(text, r"after ([\d,]+) re-sends") or 0
        inputs = [namespaced(namespace, s) for s in INPUT_SUFFIXES]
        ends, _ = offsets(bootstrap, None, inputs)
        on_topics = sum(ends.values())
        # A send whose acknowledgement was lost with the connection is sent again by the
        # emitter; if the first copy had reached Kafka both are on the topic, byte for byte
        # (same event_id: the worker drops the second). Such copies are the only extra records
        # allowed, and no more of them than re-sends.
        seen: set[tuple[str, bytes | None, bytes | None]] = set()
        copies = 0
        for topic in inputs:
            for m in read_all(bootstrap, topic):
                ident = (topic, m.key, m.value)
                copies += ident in seen
                seen.add(ident)
        out.figures["emitter's count of messages sent"] = (
            "no summary" if reported is None else reported
        )
        out.figures["emitter's count of messages not confirmed"] = unsent
        out.figures["emitter's re-sends"] = resent
        out.figures["messages on the topics"] = on_topics
        out.figures["of them second copies of a re-send"] = copies
        out.check(reported is not None, f"the emitter printed no summary; see {emit_log}")
        extra = on_topics - (reported or 0)
        out.check(
            reported is not None and 0 <= extra <= min(copies, resent),
            f"the emitter says {reported} sent, the topics hold {on_topics} "
            f"({copies} second copies, {resent} re-sends)",
        )
        out.check(unsent == 0, f"messages the emitter could not confirm (lost): {unsent}")
        out.check(rc == 0, f"the emitter exited with {rc}")
    finally:
        if emitter is not None and emitter.poll() is None:
            emitter.kill()
            emitter.wait()
        _private(["down"])
    return out.finish()


# --- f: hostile input ---------------------------------------------------------------------------


def experiment_f(lab: Lab) -> Outcome:
    """Hostile messages of every category among valid events, one worker."""
    out = Outcome("f", f"{lab.hostile:,} hostile messages among {lab.valid:,} valid events")
    namespace = app_id = unique("chaos-f")
    ensure_topics(lab, namespace)
    valid_lines = lab.lines()[: lab.valid]
    valid_events = [json.loads(line) for line in valid_lines]
    now = datetime.now(UTC)
    bad = list(
        generate(lab.hostile, valid_events, seed=lab.seed, wall_now=now, heavy_cap=lab.heavy_cap)
    )
    mixed = interleave(routed(namespace, valid_lines), bad, seed=lab.seed)
    messages = [
        item if not is_bad else (f"{namespace}.{item.topic_suffix}", item.key, item.value)
        for is_bad, item in mixed
    ]
    metas = produce(lab.bootstrap, messages)
    expected: dict[tuple[str, int, int], Any] = {}
    for (is_bad, item), meta in zip(mixed, metas, strict=True):
        if is_bad:
            expected[(meta.topic, meta.partition, meta.offset)] = item
    worker = lab.worker(app_id, namespace)
    try:
        worker.start(timeout=300)
        assert worker.proc is not None
        pid = worker.proc.pid
        took = wait_settled(lab, app_id, namespace, alive=worker.alive, timeout=lab.timeout)
        out.figures["seconds to settle"] = "did not settle" if took is None else took
        out.figures["backlog left"] = backlog(lab, app_id, namespace)
        health = _health(worker)
        out.figures["worker pid unchanged and alive"] = worker.alive() and worker.proc.pid == pid
        out.figures["/healthz"] = health
        crashes = _log_count(worker, r"crashed|Traceback|OverflowError|RecursionError")
        out.figures["crash lines in the worker log"] = crashes
        dlq = read_all(lab.bootstrap, dlq_topic(namespace))
        got: dict[tuple[str, int, int], tuple[str, Any]] = {}
        for msg in dlq:
            h = {k: v.decode() for k, v in msg.headers}
            where = (
                h.get("engage.original_topic", ""),
                int(h.get("engage.original_partition", -1)),
                int(h.get("engage.original_offset", -1)),
            )
            got[where] = (h.get("engage.reason", ""), msg)
        wrong: Counter[tuple[str, str, str]] = Counter()
        missing: Counter[str] = Counter()
        altered = 0
        for where, item in expected.items():
            if where not in got:
                missing[item.category] += 1
                continue
            reason, msg = got[where]
            if reason != item.reason:
                wrong[(item.category, item.reason, reason)] += 1
            if msg.value != item.value or msg.key != item.key:
                altered += 1
        valid_in_dlq = sum(1 for where in got if where not in expected)
        states = table_state(lab.bootstrap, customers_changelog(app_id))
        want: Counter[str] = Counter()
        ids: set[tuple[str, str]] = set()
        for evt in valid_events:
            if (evt["customer_id"], evt["event_id"]) not in ids:
                ids.add((evt["customer_id"], evt["event_id"]))
                want[evt["customer_id"]] += 1
        have = {cid: sum(s.counts.values()) for cid, s in states.items()}
        unfolded = sum(max(n - have.get(cid, 0), 0) for cid, n in want.items())
        out.figures["categories"] = len({i.category for i in expected.values()})
        out.figures["hostile dead-lettered, exact reason"] = sum(
            1 for w, i in expected.items() if w in got and got[w][0] == i.reason
        )
        out.figures["hostile missing from the DLQ"] = dict(missing) or 0
        out.figures["hostile with a wrong reason"] = {
            f"{c} ({e} -> {g or 'none'})": n for (c, e, g), n in wrong.items()
        } or 0
        out.figures["DLQ bytes altered"] = altered
        out.figures["valid events dead-lettered"] = valid_in_dlq
        out.figures["valid events not folded"] = unfolded
        out.check(not missing, f"{sum(missing.values())} hostile messages not in the DLQ")
        out.check(not wrong, f"{sum(wrong.values())} hostile messages with a wrong reason")
        out.check(altered == 0, f"{altered} DLQ records differ from the original bytes")
        out.check(
            valid_in_dlq == 0 and unfolded == 0,
            f"{valid_in_dlq} valid events dead-lettered, {unfolded} not folded",
        )
        out.check(
            worker.alive() and worker.proc.pid == pid and crashes == 0 and health == 200,
            f"the worker crashed or restarted (alive {worker.alive()}, "
            f"{crashes} crash lines, /healthz {health})",
        )
        out.check(took is not None, "the input was not all processed (the stream stalled)")
    finally:
        worker.stop()
    return out.finish()


def _health(worker: Worker) -> int | str:
    try:
        return worker.get("/healthz")[0]
    except OSError as exc:
        return type(exc).__name__


def _log_count(worker: Worker, pattern: str) -> int:
    text = worker.log_path.read_text(errors="replace") if worker.log_path.exists() else ""
    return len(re.findall(pattern, text))


# --- g, h, i: a replicated cluster (--brokers 3) ---------------------------------------------


@dataclass
class Cluster:
    """The private Kafka cluster of `--brokers N` (never the shared stack): its nodes, and
    what the failover experiments do to them."""

    settings: Any  # stream.tools.devstack.DevstackSettings

    def nodes(self) -> list[Any]:
        from stream.tools.devstack import kafka_nodes

        return kafka_nodes(self.settings)

    def node(self, node_id: int) -> Any:
        return self.nodes()[node_id - 1]

    def up(self) -> dict[str, str]:
        """Start whatever node is not running; returns once every node answers."""
        from stream.tools.devstack import ensure_up

        return ensure_up(("kafka",), settings=self.settings)

    def stop_node(self, node_id: int, *, kill: bool) -> None:
        from stream.tools.devstack import stop_node

        stop_node(self.node(node_id), kill=kill)

    def down(self) -> None:
        from stream.tools.devstack import stop

        stop(("kafka",), wipe=True, settings=self.settings, report=print)


CLUSTER_DIR = Path("/tmp/chaos-cluster")
#: Ports of the private cluster: node n on these plus (n - 1) x 100 (49092, 49192, 49292, ...).
CLUSTER_PORTS = {"kafka_port": 49092, "kafka_controller_port": 49093, "kafka_sasl_port": 49094}


def start_cluster(brokers: int) -> Cluster:
    """A private cluster of `brokers` KRaft nodes in CLUSTER_DIR, with the shared stack's jars
    (a symlink, read only) when they are current."""
    from stream.tools import devstack

    shared = devstack.Layout(devstack.load_settings().root)
    CLUSTER_DIR.mkdir(parents=True, exist_ok=True)
    libs = CLUSTER_DIR / "libs"
    if not libs.exists() and devstack.jars_current(shared):
        libs.symlink_to(shared.libs)
    settings = devstack.load_settings(
        devstack_dir=CLUSTER_DIR, kafka_brokers=brokers, devstack_timeout_s=180, **CLUSTER_PORTS
    )
    cluster = Cluster(settings)
    started = time.monotonic()
    cluster.up()
    print(f"cluster: {brokers} brokers up in {time.monotonic() - started:.1f} s in {CLUSTER_DIR}")
    return cluster


async def _partition_map(bootstrap: str, topics: list[str]) -> dict[TopicPartition, dict]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {
        TopicPartition(t["topic"], p["partition"]): p
        for t in described
        for p in t["partitions"]
        if t.get("error_code", 0) == 0
    }


def partition_map(bootstrap: str, topics: list[str]) -> dict[TopicPartition, dict]:
    """Each partition's leader, replicas and in-sync replicas, as the cluster reports them."""
    return asyncio.run(_partition_map(bootstrap, topics))


def under_replicated(bootstrap: str, topics: list[str]) -> int:
    """Partitions of `topics` with fewer in-sync replicas than replicas (-1: not known now)."""
    try:
        parts = partition_map(bootstrap, topics)
    except Exception:  # a node is starting: the metadata answer may fail for a moment
        return -1
    return sum(1 for p in parts.values() if len(p["isr"]) < len(p["replicas"]))


def _wait_in_sync(lab: Lab, topics: list[str], timeout: float) -> float | None:
    """Seconds until every partition of `topics` has all its replicas in sync (None: never)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if under_replicated(lab.bootstrap, topics) == 0:
            return time.monotonic() - started
        time.sleep(0.5)
    return None


class Feeder(threading.Thread):
    """Produces `records` at about `rate` per second with one durable producer (acks=all,
    idempotent) that rides out leader changes; a slice whose sends fail is sent again with a
    new producer (a duplicate input event is dropped by the worker by its event_id). Records
    the longest time without an acknowledgement."""

    def __init__(self, bootstrap: str, records: list[Any], rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.records, self.rate = bootstrap, records, rate
        self.head = 0  # records produced before the feeder started (see _feed)
        self.acked = 0
        self.resent = 0
        self.longest_gap = 0.0
        self.error: str | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as exc:  # reported as a figure, the experiment fails on the count
            self.error = f"{type(exc).__name__}: {exc}"

    def _producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            max_request_size=2 * 1024 * 1024,
            linger_ms=10,
        )

    async def _run(self) -> None:
        producer = self._producer()
        await producer.start()
        step = max(1, int(self.rate / 2))
        started = last_ack = time.monotonic()
        try:
            for i in range(0, len(self.records), step):
                pending = self.records[i : i + step]
                while pending:
                    futures = [await producer.send(t, value=v, key=k) for t, k, v in pending]
                    results = await asyncio.gather(*futures, return_exceptions=True)
                    failed = [
                        rec
                        for rec, res in zip(pending, results, strict=True)
                        if isinstance(res, BaseException)
                    ]
                    now = time.monotonic()
                    if len(failed) < len(pending):
                        self.longest_gap = max(self.longest_gap, now - last_ack)
                        last_ack = now
                    self.acked += len(pending) - len(failed)
                    if failed:  # a fresh producer id: the old one's sequence may be broken
                        self.resent += len(failed)
                        await producer.stop()
                        producer = self._producer()
                        await producer.start()
                    pending = failed
                ahead = started + (i + step) / self.rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)  # pacing the load, not waiting for a condition
        finally:
            await producer.stop()


class Progress(threading.Thread):
    """Samples the workers' consumed counts every 0.2 s while `feeding()` holds: the longest
    time their total did not grow while input was arriving (the time to resume after a fault)."""

    def __init__(self, workers: list[ChaosWorker], feeding: Callable[[], bool]) -> None:
        super().__init__(daemon=True)
        self.workers, self.feeding = workers, feeding
        self.longest_pause = 0.0
        self.paused_at: float | None = None  # monotonic start of the longest pause
        self._halt = threading.Event()

    def run(self) -> None:
        best, since = 0.0, time.monotonic()
        while not self._halt.is_set():
            total = sum(consumed(w) for w in self.workers)
            now = time.monotonic()
            if total > best:
                best, since = total, now
            elif self.feeding() and now - since > self.longest_pause:
                self.longest_pause, self.paused_at = now - since, since
            self._halt.wait(0.2)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def _needs_cluster(lab: Lab, out: Outcome) -> bool:
    if lab.cluster is None or len(lab.cluster.nodes()) < 3:
        out.failures.append("needs a cluster of three brokers: run with --brokers 3")
        out.finish()
        return False
    return True


def _cluster_run(lab: Lab, prefix: str) -> tuple[str, list[Any], list[str]]:
    """A fresh namespace on the cluster: (namespace = app id, routed records, input topics)."""
    namespace = unique(prefix)
    ensure_topics(lab, namespace)
    inputs = [namespaced(namespace, s) for s in INPUT_SUFFIXES]
    return namespace, list(routed(namespace, lab.lines())), inputs


def _feed(lab: Lab, records: list[Any], seconds: float) -> Feeder:
    """A tenth of the records now, the rest paced over about `seconds` by a Feeder."""
    head = len(records) // 10
    produce(lab.bootstrap, records[:head])
    feeder = Feeder(lab.bootstrap, records[head:], max(50.0, (len(records) - head) / seconds))
    feeder.head = head
    return feeder


def _finish_cluster_run(
    out: Outcome,
    lab: Lab,
    clean: dict[str, Any],
    namespace: str,
    workers: list[ChaosWorker],
    feeder: Feeder,
    progress: Progress,
    fault_at: float,
) -> None:
    """Wait for the input and the workers, then the figures and the verdict of g, h and i."""
    feeder.join(timeout=lab.timeout)
    progress.stop()
    took = wait_settled(
        lab, namespace, namespace, alive=lambda: any(w.alive() for w in workers),
        timeout=lab.timeout,
    )  # fmt: skip
    acked, total = feeder.acked + feeder.head, len(lab.lines())
    out.figures["input acknowledged by Kafka"] = f"{acked:,} of {total:,}"
    out.figures["producer re-sends (failed slices)"] = feeder.resent
    out.figures["longest producer pause without acks s"] = feeder.longest_gap
    out.figures["longest pause of the workers' progress s"] = progress.longest_pause
    if progress.paused_at is not None:
        out.figures["that pause began, s after the fault"] = progress.paused_at - fault_at
    out.figures["seconds to settle"] = "did not settle" if took is None else took
    out.figures["worker restarts"] = sum(1 for w in workers if not w.alive())
    out.check(feeder.error is None, f"the producer failed: {feeder.error}")
    out.check(acked == total, f"only {acked:,} of {total:,} input events acknowledged")
    out.check(took is not None, f"input not all processed within {lab.timeout:.0f} s")
    out.check(all(w.alive() for w in workers), "a worker exited")
    judge_run(out, clean, lab, namespace, namespace)


def experiment_g(lab: Lab) -> Outcome:
    """kill -9 the leader of the busiest input partition while a worker processes under load."""
    out = Outcome("g", "cluster: kill -9 the leader of the busiest input partition under load")
    if not _needs_cluster(lab, out):
        return out
    assert lab.cluster is not None
    clean = clean_run(lab)
    namespace, records, inputs = _cluster_run(lab, "chaos-g")
    feeder = _feed(lab, records, 40.0)
    worker = lab.worker(namespace, namespace)
    killed: int | None = None
    try:
        worker.start(timeout=300)
        progress = Progress([worker], feeder.is_alive)
        feeder.start()
        progress.start()
        wait_for(lambda: consumed(worker) >= 0.3 * len(records), timeout=lab.timeout,
                 interval=0.1, what="30 % of the input")  # fmt: skip
        ends, _ = offsets(lab.bootstrap, None, inputs)
        busiest = max(ends, key=lambda tp: ends[tp])
        before = partition_map(lab.bootstrap, inputs)
        killed = before[busiest]["leader"]
        led = sum(1 for p in before.values() if p["leader"] == killed)
        lab.cluster.stop_node(killed, kill=True)
        fault_at = time.monotonic()
        out.figures["busiest input partition"] = f"{busiest.topic}[{busiest.partition}]"
        out.figures["broker killed (its leader)"] = killed
        out.figures["input partitions it led"] = led

        def moved() -> bool:
            try:
                now = partition_map(lab.bootstrap, [busiest.topic])
            except Exception:
                return False
            return now[busiest]["leader"] not in (killed, -1)

        wait_for(moved, timeout=120, interval=0.25, what="a new leader")
        out.figures["new leader elected after s"] = time.monotonic() - fault_at
        after = partition_map(lab.bootstrap, [busiest.topic])[busiest]
        out.figures["new leader, in-sync replicas"] = f"{after['leader']}, {sorted(after['isr'])}"
        # The broker stays down while the rest of the input arrives, then comes back.
        feeder.join(timeout=lab.timeout)
        back = time.monotonic()
        lab.cluster.up()
        out.figures["killed broker restarted in s"] = time.monotonic() - back
        synced = _wait_in_sync(lab, [*inputs, customers_changelog(namespace)], 300)
        out.figures["replicas in sync again after s"] = "never" if synced is None else synced
        killed = None
        _finish_cluster_run(out, lab, clean, namespace, [worker], feeder, progress, fault_at)
    finally:
        worker.stop()
        if killed is not None:
            lab.cluster.up()
    return out.finish()


def experiment_h(lab: Lab) -> Outcome:
    """A rolling restart of every broker (SIGTERM, start, wait until in sync) under load."""
    out = Outcome("h", "cluster: rolling restart of all brokers under load")
    if not _needs_cluster(lab, out):
        return out
    assert lab.cluster is not None
    clean = clean_run(lab)
    namespace, records, inputs = _cluster_run(lab, "chaos-h")
    watched = [*inputs, customers_changelog(namespace), decisions_topic(namespace)]
    nodes = len(lab.cluster.nodes())
    feeder = _feed(lab, records, 30.0 * nodes)
    worker = lab.worker(namespace, namespace)
    try:
        worker.start(timeout=300)
        progress = Progress([worker], feeder.is_alive)
        feeder.start()
        progress.start()
        wait_for(lambda: consumed(worker) >= 0.15 * len(records), timeout=lab.timeout,
                 interval=0.1, what="15 % of the input")  # fmt: skip
        fault_at = time.monotonic()
        steps: list[str] = []
        for node in range(1, nodes + 1):
            t0 = time.monotonic()
            lab.cluster.stop_node(node, kill=False)
            stopped = time.monotonic() - t0
            lab.cluster.up()
            started = time.monotonic() - t0 - stopped
            synced = _wait_in_sync(lab, watched, 300)
            steps.append(
                f"{node}: stop {stopped:.1f} s, start {started:.1f} s, in sync "
                + ("never" if synced is None else f"{synced:.1f} s")
            )
            out.check(synced is not None, f"broker {node}'s replicas never caught up")
        out.figures["roll (per broker)"] = steps
        out.figures["whole roll s"] = time.monotonic() - fault_at
        out.figures["feeder still producing after the roll"] = feeder.is_alive()
        _finish_cluster_run(out, lab, clean, namespace, [worker], feeder, progress, fault_at)
    finally:
        worker.stop()
        lab.cluster.up()
    return out.finish()


def _coordinator(bootstrap: str, group: str) -> int:
    async def find() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return int(await admin.find_coordinator(group))
        finally:
            await admin.close()

    return asyncio.run(find())


def experiment_i(lab: Lab) -> Outcome:
    """A second worker joins under load; while the group rebalances, its coordinator's broker
    is killed with SIGKILL."""
    out = Outcome("i", "cluster: the group coordinator's broker killed during a rebalance")
    if not _needs_cluster(lab, out):
        return out
    assert lab.cluster is not None
    clean = clean_run(lab)
    namespace, records, _inputs = _cluster_run(lab, "chaos-i")
    feeder = _feed(lab, records, 50.0)
    first = lab.worker(namespace, namespace)
    second = lab.worker(namespace, namespace)
    workers = [first, second]
    killed: int | None = None
    try:
        first.start(timeout=300)
        progress = Progress(workers, feeder.is_alive)
        feeder.start()
        progress.start()
        wait_for(lambda: consumed(first) >= 0.25 * len(records), timeout=lab.timeout,
                 interval=0.1, what="a quarter of the input")  # fmt: skip
        killed = _coordinator(lab.bootstrap, namespace)
        second.spawn()
        joined = time.monotonic()
        # The rebalance has begun once the first worker gives up its assignment (/readyz 503);
        # should the poll miss it, the second worker's readiness says the rebalance is over.
        wait_for(lambda: not first.ready() or second.ready(), timeout=120, interval=0.05,
                 what="the rebalance")  # fmt: skip
        out.figures["rebalance in progress at the kill"] = not second.ready()
        out.figures["kill, s after the second worker started"] = time.monotonic() - joined
        lab.cluster.stop_node(killed, kill=True)
        fault_at = time.monotonic()
        out.figures["broker killed (the group's coordinator)"] = killed
        wait_for(lambda: first.ready() and second.ready(), timeout=300, interval=0.2,
                 what="both workers ready")  # fmt: skip
        out.figures["both workers ready, s after the kill"] = time.monotonic() - fault_at
        out.figures["new coordinator"] = _coordinator(lab.bootstrap, namespace)
        feeder.join(timeout=lab.timeout)
        back = time.monotonic()
        lab.cluster.up()
        out.figures["killed broker restarted in s"] = time.monotonic() - back
        killed = None
        _finish_cluster_run(out, lab, clean, namespace, workers, feeder, progress, fault_at)
    finally:
        for w in workers:
            w.stop()
        if killed is not None:
            lab.cluster.up()
    return out.finish()


# --- main ---------------------------------------------------------------------------------------

EXPERIMENTS: dict[str, Callable[[Lab], Outcome]] = {
    "a": experiment_a,
    "b": experiment_b,
    "c": experiment_c,
    "d": experiment_d,
    "e": experiment_e,
    "f": experiment_f,
    "g": experiment_g,
    "h": experiment_h,
    "i": experiment_i,
}


def summary(outcomes: list[Outcome]) -> str:
    """The closing table: one row per experiment and guarantee."""
    rows = [f"{'':2}{'experiment':<62} {'guarantee':<14} verdict"]
    for o in outcomes:
        verdict = "PASS" if o.passed else "FAIL"
        rows.append(f"{o.name:<2}{o.title[:60]:<62} {o.guarantee:<14} {verdict}")
        for failure in o.failures:
            rows.append(f"{'':4}- {failure[:150]}")
    return "\n".join(rows)


def runs(chosen: list[str], guarantees: list[str]) -> list[tuple[str, str]]:
    """(experiment, guarantee) in the order they run: each experiment under every guarantee
    in turn; one that runs no worker once ("-")."""
    return [(name, g) for name in chosen for g in (["-"] if name in WITHOUT_WORKER else guarantees)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="a,b,c,d,e,f", help="comma-separated experiments")
    parser.add_argument(
        "--guarantee", default="at_least_once", choices=[*GUARANTEES, "both"],
        help="the workers' ENGAGE_PROCESSING_GUARANTEE; both: every experiment under each "
        "(exactly_once: only workers of a --worker-root from before its removal accept it)",
    )  # fmt: skip
    parser.add_argument("--events", type=int, default=10_000, help="persona events per run")
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--hostile", type=int, default=10_000, help="hostile messages (f)")
    parser.add_argument("--valid", type=int, default=1_000, help="valid events around them (f)")
    parser.add_argument("--heavy-cap", type=int, default=40, help="1 MB / 100k-nesting each")
    parser.add_argument("--mode", default="follow", choices=["follow", "live"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drain", default="direct", choices=["direct", "lean", "faust"],
                        help="the workers' ENGAGE_DRAIN")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600.0, help="per wait, seconds")
    parser.add_argument("--bootstrap", help="an existing broker; default: the local stack")
    parser.add_argument(
        "--brokers", type=int, default=1,
        help="run on a private cluster of this many brokers (g, h, i need 3); stopped at the end",
    )  # fmt: skip
    parser.add_argument(
        "--keep-cluster", action="store_true", help="leave the private cluster running"
    )
    parser.add_argument(
        "--worker-root",
        type=Path,
        default=ROOT,
        help="run `engage worker` from this source tree (e.g. an export of another commit)",
    )
    args = parser.parse_args(argv)
    # Produce retries right after a topic is created ("NotLeaderForPartition") are routine.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    chosen = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(chosen) - set(EXPERIMENTS))
    if unknown:
        parser.error(f"unknown experiments {unknown}; choose from {sorted(EXPERIMENTS)}")
    cluster = None
    if args.brokers > 1:
        # A broker down is the experiment: the clients' connection errors are expected.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        cluster = start_cluster(args.brokers)
        bootstrap = cluster.up()["kafka"]
    elif args.bootstrap:
        bootstrap = args.bootstrap
    else:
        from stream.tools.devstack import ensure_up

        bootstrap = ensure_up(("kafka",))["kafka"]
    lab = Lab(
        bootstrap=bootstrap,
        events=args.events,
        customers=args.customers,
        partitions=args.partitions,
        seed=args.seed,
        mode=args.mode,
        hostile=args.hostile,
        valid=min(args.valid, args.events),
        heavy_cap=args.heavy_cap,
        timeout=args.timeout,
        worker_root=args.worker_root.resolve(),
        worker_env={"ENGAGE_DRAIN": args.drain},
        cluster=cluster,
    )
    guarantees = list(GUARANTEES) if args.guarantee == "both" else [args.guarantee]
    print(f"chaos: {', '.join(chosen)} on {bootstrap}, {lab.partitions} partitions, "
          f"{lab.events:,} persona events, mode {lab.mode}, drain {args.drain}, "
          f"guarantee {' and '.join(guarantees)}, workers from {lab.worker_root}; "
          f"logs in {lab.workdir}")  # fmt: skip
    random.seed(args.seed)
    outcomes = []
    for name, guarantee in runs(chosen, guarantees):
        started = time.monotonic()
        # The copy shares the traffic and the clean run (lab.cache) with the others.
        here = lab if guarantee == "-" else replace(lab, guarantee=guarantee)
        try:
            outcome = EXPERIMENTS[name](here)
        except Exception as exc:  # one broken experiment must not hide the others' figures
            outcome = Outcome(name, "experiment did not complete")
            outcome.failures.append(f"{type(exc).__name__}: {str(exc)[:300]}")
            outcome.finish()
        outcome.guarantee = guarantee
        outcome.figures["experiment wall s"] = time.monotonic() - started
        outcome.print()
        outcomes.append(outcome)
    print("\n" + summary(outcomes))
    if cluster is not None and not args.keep_cluster:
        cluster.down()
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
