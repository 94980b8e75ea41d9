"""The emitter client (`stream.client`) stands on its own: importing it loads no tool.

Teams embed the client in their services; it must not drag in the demo, the emitter's
simulation or anything else under `stream.tools`. Checked in a fresh interpreter, so modules
other tests imported do not hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness import ROOT


def test_importing_the_client_loads_nothing_from_the_tools() -> None:
    code = (
        "import json, sys; import stream.client, stream.client.producer; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('stream.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = json.loads(out.stdout)
    assert "stream.client.producer" in loaded and "stream.kafka_client" in loaded
    assert [m for m in loaded if m.startswith("stream.tools")] == []
