"""Lift with uncertainty: the interval arithmetic pinned to published worked examples, the
verdict, and invariants over every small table (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.lift import held_out_needed, katz_ratio, lift, newcombe, wilson, z_value


def approx4(value: float | None) -> pytest.approx:
    return pytest.approx(value, abs=0.00005)


@pytest.mark.parametrize(
    ("x", "n", "lower", "upper"),
    [
        # Newcombe (1998) "Two-sided confidence intervals for the single proportion", Table I,
        # method 3 (score interval without continuity correction).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0000, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (29, 29, 0.8830, 1.0000),
    ],
)
def test_wilson_matches_newcombe_table(x: int, n: int, lower: float, upper: float) -> None:
    interval = wilson(x, n)
    assert interval.estimate == x / n
    assert (round(interval.lower, 4), round(interval.upper, 4)) == (lower, upper)


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "lower", "upper"),
    [
        # Newcombe (1998) "Interval estimation for the difference between independent
        # proportions: comparison of eleven methods", worked examples, method 10.
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (5, 56, 0, 29, -0.0381, 0.1926),
        (0, 10, 0, 20, -0.1611, 0.2775),
        (10, 10, 0, 20, 0.6791, 1.0000),
    ],
)
def test_newcombe_hybrid_score_matches_worked_examples(
    x1: int, n1: int, x2: int, n2: int, lower: float, upper: float
) -> None:
    interval = newcombe(x1, n1, x2, n2)
    assert interval.estimate == pytest.approx(x1 / n1 - x2 / n2)
    assert (round(interval.lower, 4), round(interval.upper, 4)) == (lower, upper)


def test_katz_ratio_matches_a_published_trial() -> None:
    """ACTG 076 (Connor et al. 1994, NEJM): HIV transmission 13/180 with zidovudine vs 40/183
    with placebo; relative risk 0.33, 95 % CI 0.18 to 0.60 by the log method."""
    ratio = katz_ratio(13, 180, 40, 183)
    assert round(ratio.estimate, 2) == 0.33
    assert (round(ratio.lower, 2), round(ratio.upper, 2)) == (0.18, 0.60)
    assert not ratio.corrected
    # The same formula by hand: exp(log(r) +- 1.96 sqrt(1/13 - 1/180 + 1/40 - 1/183)).
    se = math.sqrt(1 / 13 - 1 / 180 + 1 / 40 - 1 / 183)
    r = (13 / 180) / (40 / 183)
    assert ratio.lower == pytest.approx(r * math.exp(-z_value() * se))
    assert ratio.upper == pytest.approx(r * math.exp(z_value() * se))


def test_katz_ratio_with_a_zero_count_adds_one_half_to_each_cell() -> None:
    ratio = katz_ratio(4, 20, 0, 5)
    assert ratio.corrected
    assert ratio.estimate == pytest.approx((4.5 / 21) / (0.5 / 6))
    assert ratio.lower is not None and ratio.lower < ratio.estimate < ratio.upper
    assert katz_ratio(0, 20, 0, 5).estimate is None
    assert katz_ratio(0, 0, 1, 5).estimate is None


def test_sample_size_matches_r_power_prop_test() -> None:
    """R's documented example `power.prop.test(p1 = .50, p2 = .75, power = .90)` gives
    n = 76.7 per group (two-sided 5 %, pooled variance under H0, no continuity correction)."""
    n = held_out_needed(0.75, 0.50, ratio=1.0, power=0.90)
    assert round(n, 1) == 76.7
    # Fleiss' formula by hand for p = 0.65 vs 0.85 at 80 % power, equal arms.
    pbar = 0.75
    hand = (
        z_value() * math.sqrt(2 * pbar * (1 - pbar))
        + 0.8416212335729143 * math.sqrt(0.65 * 0.35 + 0.85 * 0.15)
    ) ** 2 / 0.2**2
    assert held_out_needed(0.65, 0.85, ratio=1.0) == pytest.approx(hand)
    assert round(hand, 2) == 72.39
    # Ten treated per held-out customer: fewer held-out customers than with equal arms.
    assert held_out_needed(0.65, 0.85, ratio=10.0) < hand
    assert held_out_needed(0.3, 0.3, ratio=1.0) is None


def test_verdicts() -> None:
    # The demo's case that started this: a big ratio from seven held-out customers.
    few = lift(120, 400, 1, 7)
    assert few.ratio.estimate == pytest.approx((120 / 400) / (1 / 7))
    assert few.ratio.estimate > 2 and few.ratio.excludes(1.0) is False
    assert not few.difference.excludes(0.0)
    needed = held_out_needed(0.3, 1 / 7, ratio=400 / 7)
    assert few.more_held_out_needed == math.ceil(needed) - 7
    assert few.verdict == (
        f"not yet: {few.more_held_out_needed} more held-out customers needed for this effect"
    )
    many = lift(56, 70, 48, 80)
    assert many.verdict == "significant" and many.more_held_out_needed is None
    assert lift(5, 50, 0, 0).verdict == "not yet: no held-out customers"
    assert lift(0, 0, 3, 9).verdict == "not yet: no treated customers"
    assert lift(5, 10, 2, 4).verdict == "not yet: no difference observed"
    d = many.to_dict()
    assert d["difference"] == {"estimate": 0.2, "lower": 0.0524, "upper": 0.3339}
    assert d["treated"] == 70 and d["held_out_successes"] == 48


def test_successes_are_capped_at_the_arm_size() -> None:
    assert lift(12, 10, 1, 5).treated_successes == 10


def test_impossible_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        wilson(3, 2)
    with pytest.raises(ValueError):
        katz_ratio(-1, 2, 1, 2)


counts = st.integers(min_value=0, max_value=400).flatmap(
    lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n))
)


@given(counts)
def test_wilson_contains_its_estimate(case: tuple[int, int]) -> None:
    x, n = case
    interval = wilson(x, n)
    if n == 0:
        assert interval.estimate is None
        return
    assert 0.0 <= interval.lower <= interval.estimate <= interval.upper <= 1.0
    assert interval.lower < interval.upper


@given(counts, counts)
def test_newcombe_is_antisymmetric_and_consistent_with_the_verdict(
    a: tuple[int, int], b: tuple[int, int]
) -> None:
    (x1, n1), (x2, n2) = a, b
    forward, backward = newcombe(x1, n1, x2, n2), newcombe(x2, n2, x1, n1)
    if n1 == 0 or n2 == 0:
        assert forward.estimate is None
        return
    assert -1.0 <= forward.lower <= forward.estimate <= forward.upper <= 1.0
    assert forward.lower == pytest.approx(-backward.upper)
    assert forward.upper == pytest.approx(-backward.lower)
    result = lift(x1, n1, x2, n2)
    assert (result.verdict == "significant") == forward.excludes(0.0)
    if result.more_held_out_needed is not None:
        assert result.more_held_out_needed >= 1


@given(counts, counts)
def test_katz_interval_contains_the_ratio(a: tuple[int, int], b: tuple[int, int]) -> None:
    (x1, n1), (x2, n2) = a, b
    ratio = katz_ratio(x1, n1, x2, n2)
    if ratio.estimate is None:
        assert n1 == 0 or n2 == 0 or x1 == x2 == 0
        return
    assert 0.0 < ratio.lower <= ratio.estimate <= ratio.upper
