"""The emitter never lies (a broker outage in the middle of `engage emit`).

The test owns its broker: a Kafka of its own from the project's devstack (other ports, its own
directory; the jars are copied from the shared stack when it has them), stopped and restarted
while the emitter runs. The shared stack is never touched. The emitter's counts are checked
against what the topics hold and against the same run written to a file (same seed: the same
events), so an emitter that counted unacknowledged sends, or lost some, fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from schemas.events import TOPIC_SUFFIX
from tests.harness import ROOT, free_port, read_all, unique, wait_for

#: How long the broker stays away: a fault parameter, not a synchronisation.
OUTAGE_S = 5.0
EMIT = ["--customers", "15", "--days", "40", "--start", "2026-01-01T00:00:00Z", "--seed", "9"]


@dataclass
class Broker:
    env: dict[str, str]
    bootstrap: str

    def devstack(self, action: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "stream", "devstack", action, "--only", "kafka"],
            env=self.env, cwd=ROOT, check=True, capture_output=True, timeout=240,
        )  # fmt: skip


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    root = tmp_path_factory.mktemp("outage-stack")
    shared = Path(os.environ.get("ENGAGE_DEVSTACK_DIR", ".devstack"))
    shared = shared if shared.is_absolute() else ROOT / shared
    if (shared / "libs").is_dir():  # saves the Maven download
        shutil.copytree(shared / "libs", root / "libs")
    port = free_port()
    env = {
        **os.environ,
        "ENGAGE_DEVSTACK_DIR": str(root),
        "ENGAGE_KAFKA_PORT": str(port),
        "ENGAGE_KAFKA_CONTROLLER_PORT": str(free_port()),
        "ENGAGE_KAFKA_SASL_PORT": str(free_port()),
        "ENGAGE_BROKER": f"kafka://127.0.0.1:{port}",
        "ENGAGE_PARTITIONS": "2",
    }
    b = Broker(env, f"127.0.0.1:{port}")
    b.devstack("up")
    try:
        yield b
    finally:
        b.devstack("down")


def events_of_the_run(tmp: Path) -> list[dict[str, Any]]:
    """The same run written to a file: exactly the events the Kafka run generates."""
    out = tmp / "events.jsonl"
    subprocess.run(
        [sys.executable, "-m", "stream", "emit", *EMIT, "--out", str(out), "--quiet"],
        cwd=ROOT, check=True, timeout=120,
    )  # fmt: skip
    return [json.loads(line) for line in out.read_text().splitlines()]


def in_topics(broker: Broker, ns: str) -> list[str]:
    """event_ids of every message in the run's input topics (re-sends included)."""
    ids = []
    for suffix in TOPIC_SUFFIX.values():
        ids += [
            json.loads(m.value)["event_id"] for m in read_all(broker.bootstrap, f"{ns}.{suffix}")
        ]
    return ids


def start_emitter(broker: Broker, tmp: Path, ns: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**broker.env, "ENGAGE_TOPIC_NAMESPACE": ns}
    subprocess.run([sys.executable, "-m", "stream", "topics"], env=env, cwd=ROOT, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "stream", "emit", *EMIT, "--no-feedback", "--rate", "300",
         "--summary-json", str(tmp / f"{ns}.json"), *extra],
        env=env, cwd=ROOT, stdout=(tmp / f"{ns}.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_the_emitter_counts_only_what_kafka_acknowledged_through_an_outage(
    broker: Broker, tmp_path: Path
) -> None:
    """Two runs through one outage: one rides it out (send timeout longer than the outage),
    one gives up on what it cannot send within 2 s and must say so."""
    expected = events_of_the_run(tmp_path)
    patient, hasty = unique("patient"), unique("hasty")
    procs = {
        patient: start_emitter(broker, tmp_path, patient),
        hasty: start_emitter(broker, tmp_path, hasty, "--send-timeout", "2"),
    }
    try:
        for ns in procs:
            wait_for(lambda ns=ns: len(in_topics(broker, ns)) >= 150, timeout=60, what=ns)
        assert all(p.poll() is None for p in procs.values()), "runs must outlast the start"
        broker.devstack("down")
        time.sleep(OUTAGE_S)
        broker.devstack("up")
        codes = {ns: p.wait(timeout=240) for ns, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    summaries = {ns: json.loads((tmp_path / f"{ns}.json").read_text()) for ns in procs}
    everything = {e["event_id"] for e in expected}

    # rode it out: nothing lost, every event counted once, as the topics show
    summary = summaries[patient]
    assert codes[patient] == 0, (tmp_path / f"{patient}.log").read_text()[-2000:]
    assert summary["unconfirmed_messages"] == 0
    # (whether the outage caught sends in flight depends on timing: re-sends are not required)
    assert summary["events"] == len(expected) == summary["handed_to_producer"]
    assert set(in_topics(broker, patient)) == everything

    # gave up on some: reported, not counted, and exit code 1
    summary = summaries[hasty]
    unconfirmed = summary["unconfirmed_messages"]
    assert codes[hasty] == 1
    assert unconfirmed > 0 and summary["unconfirmed_by_cause"]
    assert summary["events"] + unconfirmed == len(expected) == summary["handed_to_producer"]
    distinct = set(in_topics(broker, hasty))
    # every acknowledged event is there; an unconfirmed one may or may not be
    assert summary["events"] <= len(distinct) <= summary["events"] + unconfirmed
    assert distinct <= everything
