"""Metric samples read back: one reader for the worker's /kpis, `engage report` and the demo.

The KPI summary reads a worker's own registry, the report reads Prometheus (summed over the
workers), and the demo's live view reads a worker's /metrics text. All three ask the same
questions of the samples (the sum of a counter over some labels, a counter split by one label,
the rituals named); this class answers them once, whatever the samples came from.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from schemas.nudges import RITUALS

#: A metric's samples: [(labels, value)].
Series = list[tuple[dict[str, str], float]]

#: The counter of ritual outcomes (decided, came back, ...), per ritual, arm and rules version.
OUTCOMES_METRIC = "engage_ritual_outcomes_total"


class Samples:
    """Metric samples by name: [(labels, value)], from a registry, /metrics text or
    Prometheus (`stream.tools.report`)."""

    def __init__(self, values: dict[str, Series] | None = None) -> None:
        self.values: dict[str, Series] = values if values is not None else {}

    @classmethod
    def of_registry(cls, registry: CollectorRegistry) -> Samples:
        """Every sample a registry collects now (a worker's own /kpis)."""
        values: dict[str, Series] = {}
        for family in registry.collect():
            for sample in family.samples:
                values.setdefault(sample.name, []).append((sample.labels, sample.value))
        return cls(values)

    @classmethod
    def of_text(cls, text: str) -> Samples:
        """The samples of a Prometheus text exposition (a worker's /metrics body)."""
        from prometheus_client.parser import text_string_to_metric_families

        values: dict[str, Series] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values.setdefault(sample.name, []).append((sample.labels, sample.value))
        return cls(values)

    def series(self, name: str) -> Series:
        """The samples of `name` (none: empty)."""
        return self.values.get(name, [])

    def get(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        return sum(v for lbl, v in self.series(name) if labels.items() <= lbl.items())

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """The samples of `name` whose labels include `labels`, summed per value of `label`."""
        out: dict[str, float] = {}
        for lbl, v in self.series(name):
            if label in lbl and labels.items() <= lbl.items():
                out[lbl[label]] = out.get(lbl[label], 0.0) + v
        return out

    def outcome(self, ritual: str, arm: str, outcome: str, **labels: str) -> float:
        """A ritual outcome count (`decided`, `came_back`, ...) of one arm (`treated`,
        `held_out`): what lift is computed from."""
        return self.get(OUTCOMES_METRIC, ritual=ritual, arm=arm, outcome=outcome, **labels)

    def rituals(self) -> list[str]:
        """The packaged rituals, then any other ritual these samples name (a rules file's
        own rituals), in a stable order."""
        seen = dict.fromkeys(RITUALS)
        for name in ("engage_ritual_decisions_total", OUTCOMES_METRIC):
            for lbl, _v in self.series(name):
                if "ritual" in lbl:
                    seen.setdefault(lbl["ritual"])
        return list(seen)
