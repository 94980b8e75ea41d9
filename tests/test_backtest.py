"""The backtest of a rules change (`engage rules diff`): both rule sets over one history,
in-process, and what differs.

Unit tests run the in-process engine on small hand-made histories; the integration tests prove
that the in-process pass decides exactly what a real `engage replay` on the broker decides, and
that `--from-topics` reads the production topics without writing or committing anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stream.core.backtest import History, run_pass
from stream.core.clock import wall_ms
from stream.core.rules import load_rules
from stream.tools.replay import canonical_lines, run_replay
from tests.harness import unique

ROOT = Path(__file__).resolve().parent.parent


def emit(path: Path, *, customers: int, days: int, seed: int, bad: float = 0.0) -> list[bytes]:
    """A persona traffic file from the emitter (`engage emit --out`)."""
    subprocess.run(
        [sys.executable, "-m", "stream", "emit", "--customers", str(customers), "--days",
         str(days), "--start", "2025-06-01T00:00:00Z", "--seed", str(seed), "--bad-fraction",
         str(bad), "--out", str(path), "--quiet"],
        check=True, cwd=ROOT,
    )  # fmt: skip
    return path.read_bytes().splitlines()


# --- integration: the in-process pass is `engage replay` -----------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_in_process_pass_equals_a_real_replay_byte_for_byte(bootstrap: str, tmp_path: Path) -> None:
    from stream.settings import Settings

    lines = emit(tmp_path / "events.jsonl", customers=120, days=75, seed=23, bad=0.01)[:25_000]
    until = int(datetime(2025, 9, 1, tzinfo=UTC).timestamp() * 1000)
    ns = unique("bt")
    settings = Settings(broker=f"kafka://{bootstrap}", app_id=ns, topic_namespace=ns, partitions=4)
    real = list(canonical_lines(run_replay(lines, settings=settings, until=until, workers=2)))

    history = History("backtest", 4, wall_ms())
    for line in lines:
        if line.strip():
            history.add_line(line)
    result = run_pass(history, load_rules(), wall_ms=wall_ms(), until=until)
    records = sorted(
        (json.loads(raw) for raw in result.decisions.values()),
        key=lambda d: (d["customer_id"], d["decided_at"], d["ritual"], d["anchor"]),
    )
    mine = list(canonical_lines(records))
    assert len(real) > 300
    assert mine == real
    # the engine's own bytes are already the canonical line (what diff.jsonl carries)
    assert all(result.decisions[json.loads(line)["nudge_id"]] == line.encode() for line in mine)
    dead = sum(n for k, n in result.counts.items() if k[0] == "dlq")
    assert dead > 0  # the bad lines were dead-lettered, as the workers did
