"""`check_rules_file` (what `engage rules check` and the worker print): every problem of a
rules file as FILE:LINE:COL: message, and hostile files answered with a message, never a
traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core.rules import RulesError, check_rules_file, load_rules

LINE = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")


def problems_of(tmp_path: Path, text: str | bytes) -> list[str]:
    path = tmp_path / "rules.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    out = check_rules_file(path)
    for p in out:
        m = LINE.match(p)
        assert m is not None, p
        assert m["file"] == str(path)
    return out


def test_the_packaged_file_and_the_examples_are_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    for path in [root / "stream/core/default_rules.yaml", *root.glob("docs/examples/*.yaml")]:
        assert check_rules_file(path) == [], path


BAD = """\
version: x
rituals:
  browse:
    trigger:
      event: click
      when: {rating: {le: 2}, action: buy}
      facts: {who: "{customer_name}"}
    wait: two hours
  nps_party:
    trigger: {event: survey, when: {survey: nps, score: {ge: 11}}}
  we_noticed: {inactivity: soon, colour: blue}
  ghost: {holdout_percent: 5}
guardrails:
  quiet_hours: {start: "25:00"}
"""


def test_every_problem_with_its_line_and_column(tmp_path: Path) -> None:
    got = problems_of(tmp_path, BAD)
    by_line = {(int(LINE.match(p)["line"]), LINE.match(p)["msg"].split(":")[0]) for p in got}  # type: ignore[index]
    text = "\n".join(got)
    assert (8, "rituals.browse.wait.for") in by_line, text
    assert (11, "rituals.we_noticed.inactivity") in by_line, text
    assert (11, "rituals.we_noticed.colour") in by_line, text
    assert any("ghost" in p and "needs a `trigger`" in p for p in got), text
    assert any(p.startswith(f"{tmp_path}/rules.yaml:14:") and "quiet_hours.start" in p for p in got)


def test_semantic_problems_are_reported_once_the_schema_holds(tmp_path: Path) -> None:
    text = """\
version: x
rituals:
  browse:
    trigger:
      event: click
      when: {rating: {le: 2}, action: buy}
      facts: {who: "{customer_name}"}
  nps_party:
    trigger: {event: survey, when: {survey: nps, score: {ge: 11}}}
  same_party:
    trigger: {event: survey, when: {survey: nps, score: {ge: 11}}}
    holdout_percent: 3
  yearly:
    trigger: {anniversary: first_purchase}
    anchor: fixed
  undo:
    trigger: {event: purchase, facts: {order_id: "{order_id}"}}
    wait: 1d
    cancel: [{event: review, match: [rating], reason: reviewed}]
"""
    got = "\n".join(problems_of(tmp_path, text))
    assert ":6:" in got and "rating: not a field of click events" in got
    assert "action: never true for a click event" in got
    assert "{customer_name} is not a field here" in got
    assert "score: never true for a survey event" in got
    assert "duplicates ritual 'nps_party'" in got
    assert "anniversary anchor must name {year}" in got
    assert "'rating' must be one of the trigger's facts" in got


@pytest.mark.parametrize(
    "text",
    [
        b"\xff\xfe\x00garbage",
        "",
        "just a string",
        "- a\n- list\n",
        "version: [1, 2]\n",
        "version: x\nrituals: [a, b]\n",
        "version: x\nrituals: {1: {trigger: {event: click}}}\n",
        "version: x\nrituals: {Bad-Name: {trigger: {event: click}}}\n",
        "version: x\nrituals: {a: 5}\n",
        "version: x\nrituals: {a: {trigger: 5}}\n",
        "version: x\nrituals: {a: {trigger: {event: consent}}}\n",
        "version: x\nrituals: {a: {trigger: {event: click}, wait: {}}}\n",
        "version: x\nrituals: {a: {trigger: {event: click}, cancel: [{event: review, reason: r}]}}",
        "version: x\nrituals: {a: {trigger: {event: click}, wait: 1h, while_waiting: maybe}}\n",
        "version: x\nrituals: {a: {trigger: {event: click, when: {action: {}}}}}\n",
        "version: x\nrituals: {a: {triggers: []}}\n",
        "version: x\nrituals: {a: {trigger: {inactivity: 1d}, anchor: same}}\n",
        "version: x\nrituals: {three_days_later: {delay: $nothing}}\n",
        "version: x\nrituals: {three_days_later: {params: {nope: 1}}}\n",
        "version: x\nversion: y\n",
        "a: &a [1, *a]\n",
        "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: [*c, *c]\n",
        "[" * 5000 + "]" * 5000,
        "version: x\neffective_from: 2026-13-45\nprevious: nope.yaml\n",
        "version: x\n\tbad: tab\n",
    ],
)
def test_hostile_files_get_a_message_not_a_traceback(tmp_path: Path, text: str | bytes) -> None:
    got = problems_of(tmp_path, text)
    assert got, "an invalid file must be reported"
    with pytest.raises(RulesError):
        load_rules(tmp_path / "rules.yaml")


def test_a_missing_file(tmp_path: Path) -> None:
    [line] = check_rules_file(tmp_path / "missing.yaml")
    assert line.startswith(f"{tmp_path}/missing.yaml:1:1: cannot read")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=300))
def test_any_text_is_answered_with_problems_or_rules(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(f"version: fuzz\nrituals:\n  a:\n    {text}\n", encoding="utf-8")
    problems = check_rules_file(path)
    for p in problems:
        assert LINE.match(p), p
