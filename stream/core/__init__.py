"""The decision core: pure functions of (state, input, clock, rules).

Ingest validation, the per-customer fold, the profile view, partition clocks, the due index,
rituals and guardrails, and the lift statistics (intervals, verdicts). Nothing here performs
I/O or reads the wall clock inside a decision.

May import: the standard library, ``schemas``, msgspec, pydantic, PyYAML and each other.
Must not import: faust, aiokafka, redis, prometheus_client, or any other ``stream`` package.
"""
