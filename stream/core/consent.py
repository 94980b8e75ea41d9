"""Consent (SPEC §4): what a customer agreed to, and whether a decision may reach them.

Pure and shared: the state fold keeps the consent the profile shows (at once, as events are
folded), the ritual engine keeps its own copy in ritual time (so a decision sees consent as of
its own instant, and a replay gives the same answer however topics interleave). Both use these
functions, so they can never disagree on what an event means.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

SCOPES = ("marketing", "all")


class Choice(msgspec.Struct, array_like=True):
    """A customer's consent for one scope: the latest consent event by event time."""

    status: str  # opted_in | opted_out
    at: int
    event_id: str
    source: str | None = None


def supersedes(current: Choice | None, at: int, event_id: str) -> bool:
    """True when a consent event at (`at`, `event_id`) replaces `current`: the latest by event
    time wins, ties broken by event id, so the outcome does not depend on arrival order."""
    return current is None or (at, event_id) >= (current.at, current.event_id)


def apply_consent(
    current: dict[str, Choice],
    *,
    scope: str,
    status: str,
    at: int,
    event_id: str,
    source: str | None = None,
) -> dict[str, Choice]:
    """The consent after one event: `all` sets every scope, `marketing` only marketing; each
    scope keeps its latest choice (a late, older event changes nothing). Returns a new dict."""
    out = dict(current)
    for name in SCOPES if scope == "all" else (scope,):
        if supersedes(out.get(name), at, event_id):
            out[name] = Choice(status, at, event_id, source)
    return out


class Refusal(NamedTuple):
    """Why consent blocks a decision: the scope that does, and the event that said so (None:
    the rules' default for a customer who never sent a consent event)."""

    scope: str
    event_id: str | None


def refusal(
    consent: dict[str, Choice], *, marketing: bool, marketing_default: str
) -> Refusal | None:
    """None when a customer-facing decision may go ahead; otherwise why not.

    `all` opted out blocks every customer-facing ritual; `marketing` opted out (by an event or
    by the default) blocks the marketing ones. The caller exempts non-customer audiences.
    """
    everything = consent.get("all")
    if everything is not None and everything.status == "opted_out":
        return Refusal("all", everything.event_id)
    if not marketing:
        return None
    choice = consent.get("marketing")
    if choice is None:
        return Refusal("marketing", None) if marketing_default == "opted_out" else None
    return Refusal("marketing", choice.event_id) if choice.status == "opted_out" else None
