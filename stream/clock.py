"""The one place the worker reads the wall clock.

Decisions never call this: the shell reads the wall clock here and passes it into the pure core
as data (for the future-timestamp bound of SPEC §1, and for reads of the profile in live mode).
"""

from __future__ import annotations

from datetime import UTC, datetime


def wall_now() -> datetime:
    return datetime.now(UTC)
