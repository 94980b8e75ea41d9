"""Lift with uncertainty: treated vs held-out outcome rates, their intervals and a verdict.

Pure arithmetic on counts (no I/O, no clock): the shell reads the counts from the metrics
(`engage_ritual_outcomes_total`, by ritual, arm and outcome) and hands them here. Why these
methods:

* **Wilson score interval** for each rate (Wilson 1927): unlike the textbook Wald interval it
  stays inside [0, 1] and keeps close to its nominal coverage with the small held-out arms a
  holdout of a few percent gives (Newcombe 1998a, method 3).
* **Newcombe's hybrid score interval** for the difference treated - held-out (Newcombe 1998b,
  "Interval estimation for the difference between independent proportions", method 10): built
  from the two Wilson intervals, no iteration, good coverage down to zero counts.
* **Katz log interval** for the ratio treated / held-out (the "lift"; Katz et al. 1978): the
  normal approximation on log(ratio). With a zero count the log is undefined: then 0.5 is added
  to every cell (Haldane-Anscombe) and the result says so.
* **Verdict**: `significant` when the 95 % interval of the difference excludes 0; otherwise
  `not yet: N more held-out customers needed for this effect`, N from the sample size that
  gives 80 % power to a two-sided 5 % test of the observed difference, with the arms kept in
  their current ratio (Fleiss' formula without continuity correction, pooled variance under the
  null hypothesis: with equal arms it is R's `power.prop.test`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

CONFIDENCE = 0.95
POWER = 0.80


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided standard normal quantile: 1.95996... for 95 %."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate and its confidence limits (None where undefined, e.g. no sample)."""

    estimate: float | None
    lower: float | None
    upper: float | None

    def excludes(self, value: float) -> bool:
        """True when the whole interval lies on one side of `value`."""
        if self.lower is None or self.upper is None:
            return False
        return self.lower > value or self.upper < value


_NONE = Interval(None, None, None)


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a proportion (no continuity correction).

    The limits are the roots of |p_hat - p| = z sqrt(p (1 - p) / n): centre
    (p_hat + z^2 / 2n) / (1 + z^2 / n), half-width z / (1 + z^2 / n) sqrt(p_hat q_hat / n +
    z^2 / 4n^2). Exactly 0 (or 1) when no (or every) trial succeeded.
    """
    _check(successes, n)
    if n == 0:
        return _NONE
    z = z_value(confidence)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, lower, upper)


def newcombe(x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE) -> Interval:
    """Newcombe's hybrid score interval (method 10) for p1 - p2, from the Wilson limits
    (l1, u1) and (l2, u2): lower d - sqrt((p1 - l1)^2 + (u2 - p2)^2), upper
    d + sqrt((u1 - p1)^2 + (p2 - l2)^2)."""
    a, b = wilson(x1, n1, confidence), wilson(x2, n2, confidence)
    if a.estimate is None or b.estimate is None:
        return _NONE
    assert a.lower is not None and a.upper is not None
    assert b.lower is not None and b.upper is not None
    p1, p2 = a.estimate, b.estimate
    d = p1 - p2
    lower = d - math.sqrt((p1 - a.lower) ** 2 + (b.upper - p2) ** 2)
    upper = d + math.sqrt((a.upper - p1) ** 2 + (p2 - b.lower) ** 2)
    return Interval(d, max(-1.0, lower), min(1.0, upper))


@dataclass(frozen=True, slots=True)
class Ratio:
    """The ratio p1 / p2 with its Katz log interval; `corrected` when 0.5 was added to each
    cell because a count was zero (the estimate then is that of the corrected table)."""

    estimate: float | None
    lower: float | None
    upper: float | None
    corrected: bool = False

    def excludes(self, value: float) -> bool:
        if self.lower is None or self.upper is None:
            return False
        return self.lower > value or self.upper < value


def katz_ratio(x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE) -> Ratio:
    """Katz log interval of the risk ratio: exp(log(r) +- z sqrt(1/x1 - 1/n1 + 1/x2 - 1/n2))."""
    _check(x1, n1)
    _check(x2, n2)
    if n1 == 0 or n2 == 0:
        return Ratio(None, None, None)
    corrected = x1 == 0 or x2 == 0
    if x1 == 0 and x2 == 0:
        return Ratio(None, None, None)  # nothing happened in either arm: no ratio to speak of
    a, m, b, n = float(x1), float(n1), float(x2), float(n2)
    if corrected:
        a, b, m, n = a + 0.5, b + 0.5, m + 1.0, n + 1.0
    ratio = (a / m) / (b / n)
    se = math.sqrt(max(1 / a - 1 / m + 1 / b - 1 / n, 0.0))
    z = z_value(confidence)
    return Ratio(ratio, ratio * math.exp(-z * se), ratio * math.exp(z * se), corrected)


def held_out_needed(
    p_treated: float,
    p_held_out: float,
    *,
    ratio: float,
    confidence: float = CONFIDENCE,
    power: float = POWER,
) -> float | None:
    """Held-out customers needed for a two-sided test at 1 - `confidence` to detect the
    difference p_treated - p_held_out with probability `power`, when there are `ratio` treated
    customers per held-out one.

    n_h = (z_a sqrt(pbar qbar (1 + 1/k)) + z_b sqrt(p_t q_t / k + p_h q_h))^2 / (p_t - p_h)^2,
    with k = `ratio` and pbar = (k p_t + p_h) / (k + 1) the pooled rate. None when there is no
    difference to detect.
    """
    delta = p_treated - p_held_out
    if delta == 0 or ratio <= 0:
        return None
    k = ratio
    z_a = z_value(confidence)
    z_b = NormalDist().inv_cdf(power)
    pbar = (k * p_treated + p_held_out) / (k + 1)
    null = z_a * math.sqrt(pbar * (1 - pbar) * (1 + 1 / k))
    alt = z_b * math.sqrt(p_treated * (1 - p_treated) / k + p_held_out * (1 - p_held_out))
    return (null + alt) ** 2 / delta**2


@dataclass(frozen=True, slots=True)
class Lift:
    """One ritual's effect on one outcome: both arms, the difference, the ratio, a verdict."""

    treated: int
    treated_successes: int
    held_out: int
    held_out_successes: int
    treated_rate: Interval
    held_out_rate: Interval
    difference: Interval
    ratio: Ratio
    verdict: str
    more_held_out_needed: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, rates and limits rounded to 4 places (GET /kpis, the report)."""
        out = asdict(self)
        for key in ("treated_rate", "held_out_rate", "difference", "ratio"):
            out[key] = {k: _round(v) for k, v in out[key].items()}
        return out


def lift(
    treated_successes: int,
    treated: int,
    held_out_successes: int,
    held_out: int,
    *,
    confidence: float = CONFIDENCE,
    power: float = POWER,
) -> Lift:
    """Everything an analyst needs to judge a ritual's effect on one outcome, from four counts:
    decisions and decisions followed by the outcome, per arm.

    Successes are capped at their arm's size: counters of a restarted worker can briefly count
    an outcome of a decision it counted before the restart.
    """
    treated_successes = min(treated_successes, treated)
    held_out_successes = min(held_out_successes, held_out)
    t_rate = wilson(treated_successes, treated, confidence)
    h_rate = wilson(held_out_successes, held_out, confidence)
    diff = newcombe(treated_successes, treated, held_out_successes, held_out, confidence)
    ratio = katz_ratio(treated_successes, treated, held_out_successes, held_out, confidence)
    more: int | None = None
    if held_out == 0:
        verdict = "not yet: no held-out customers"
    elif treated == 0:
        verdict = "not yet: no treated customers"
    elif diff.excludes(0.0):
        verdict = "significant"
    else:
        assert t_rate.estimate is not None and h_rate.estimate is not None
        needed = held_out_needed(
            t_rate.estimate,
            h_rate.estimate,
            ratio=treated / held_out,
            confidence=confidence,
            power=power,
        )
        if needed is None:
            verdict = "not yet: no difference observed"
        else:
            more = max(math.ceil(needed) - held_out, 1)
            verdict = f"not yet: {more} more held-out customers needed for this effect"
    return Lift(
        treated=treated,
        treated_successes=treated_successes,
        held_out=held_out,
        held_out_successes=held_out_successes,
        treated_rate=t_rate,
        held_out_rate=h_rate,
        difference=diff,
        ratio=ratio,
        verdict=verdict,
        more_held_out_needed=more,
    )


def _check(successes: int, n: int) -> None:
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")


def _round(value: object) -> object:
    return round(value, 4) if isinstance(value, float) else value
