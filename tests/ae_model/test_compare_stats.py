"""Power, Holm and the sequential stopping rule, checked against published sample sizes, closed
forms and seeded simulations (numbers only; each test runs in about a second)."""

import math

import numpy as np
import pytest
from scipy import stats

from ae_model.compare.stats import (
    CS_PRIOR_VARIANCE,
    confidence_sequence,
    detectable_effect,
    holm,
    pairs_needed,
    sequential_decision,
)


@pytest.mark.parametrize(("effect_size", "published"), [(0.2, 199), (0.5, 34), (0.8, 15)])
def test_pairs_needed_matches_published_sample_sizes(effect_size: float, published: int) -> None:
    # One-sample / paired t-test, two-sided alpha 0.05, power 0.8, Cohen's d = effect / sd:
    # G*Power and Cohen (1988) give 199, 34 and 15 pairs.
    assert pairs_needed(0.01, effect_size * 0.01, 0.95) == published


@pytest.mark.parametrize("n", [2, 3, 8])
def test_detectable_effect_has_80_percent_power_by_simulation(n: int) -> None:
    # 20,000 paired t-tests with the true mean at the detectable effect reject 80% of the
    # time (binomial sd 0.3%; tolerance 1.2%). n = 2 (1 dof) needs a large noncentrality.
    sd = 0.01
    effect = detectable_effect(sd, n, 0.95)
    assert effect is not None
    d = np.random.default_rng(n).normal(effect, sd, (20_000, n))
    p = stats.ttest_1samp(d, 0.0, axis=1).pvalue
    assert np.mean(p < 0.05) == pytest.approx(0.8, abs=0.012)


def test_detectable_effect_approaches_the_normal_formula_and_needs_two_pairs() -> None:
    # Large n: (z_0.975 + z_0.8) sd / sqrt(n) = (1.959964 + 0.841621) / sqrt(400) sd.
    effect = detectable_effect(1.0, 400, 0.95)
    assert effect == pytest.approx(2.801585 / 20, rel=0.005)
    assert detectable_effect(1.0, 1, 0.95) is None and detectable_effect(None, 5, 0.95) is None
    assert detectable_effect(0.0, 3, 0.95) == 0.0 and pairs_needed(0.0, 0.01, 0.95) == 2


def test_holm_by_hand() -> None:
    # Sorted 0.01, 0.03, 0.04 of three: 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; max(0.06, 0.04).
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "none": None})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "none": None})
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


def _mixture_martingale(d: np.ndarray, mean: float) -> float:
    """The scale-invariant t-mixture (Lai 1976) at ``mean``, written out independently."""
    y, n, tau2 = d - mean, len(d), CS_PRIOR_VARIANCE
    r = y.sum() ** 2 / (y**2).sum()
    return float((1 + n * tau2) ** -0.5 * (1 - r * tau2 / (1 + n * tau2)) ** (-n / 2))


def test_confidence_sequence_ends_where_the_martingale_reaches_one_over_alpha() -> None:
    d = np.random.default_rng(1).normal(0.3, 1.0, 12)
    low, high = confidence_sequence(list(d), 0.95)
    assert _mixture_martingale(d, low) == pytest.approx(20.0)
    assert _mixture_martingale(d, high) == pytest.approx(20.0)
    assert _mixture_martingale(d, float(d.mean())) < 20.0
    # Too few pairs for any bound at this prior: the interval is the whole line.
    assert confidence_sequence([0.01, 0.02, 0.03], 0.95) == (-math.inf, math.inf)


def _stops(mean: float, sims: int = 2000, max_pairs: int = 30) -> list[tuple[int, bool]]:
    """Per simulated comparison with N(mean, 1) differences, peeking after every pair:
    the pair count it stopped at and whether its interval excluded 0 there."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(sims):
        d = list(rng.normal(mean, 1.0, max_pairs))
        for n in range(2, max_pairs + 1):
            decision = sequential_decision(d[:n], 2, max_pairs)
            if decision.stop:
                break
        low, high = decision.interval
        out.append((decision.n, low > 0 or high < 0))
    return out


def test_peeking_after_every_pair_keeps_the_false_positive_rate() -> None:
    # 2,000 null comparisons, a look after each of 2..30 pairs. The confidence sequence may
    # exclude 0 in at most 5% of them (+1.5% tolerance: 3 binomial sds); a t-test repeated at
    # every look, on the same kind of data, does far worse.
    false_positive = np.mean([excluded for _, excluded in _stops(0.0)])
    assert false_positive <= 0.05 + 0.015
    d = np.random.default_rng(0).normal(0.0, 1.0, (2000, 30))
    looks = [stats.ttest_1samp(d[:, :n], 0.0, axis=1).pvalue < 0.05 for n in range(2, 31)]
    naive = np.mean(np.any(looks, axis=0))
    assert naive > 0.10


def test_a_real_effect_stops_early_most_of_the_time() -> None:
    # A true mean of one sd (e.g. +1 AP with seed-pair sd 1 AP), at most 30 pairs.
    runs = _stops(1.0, sims=500)
    early = np.mean([n < 30 and excluded for n, excluded in runs])
    assert early > 0.8
    assert np.mean([n for n, _ in runs]) < 20


def test_sequential_decision_reasons() -> None:
    wait = sequential_decision([0.01, 0.02], min_pairs=3, max_pairs=10)
    assert not wait.stop and wait.reason == "2 of at least 3 pairs"
    gain = sequential_decision([0.010, 0.011, 0.012, 0.010, 0.011], 3, 10)
    assert gain.stop and gain.reason.startswith("a gain: 95% confidence sequence")
    noisy = [0.01, -0.01, 0.012, -0.011, 0.009, -0.01]
    assert not sequential_decision(noisy, 3, 10).stop
    done = sequential_decision(noisy, 3, 6)
    assert done.stop and done.reason.startswith("undecided at the maximum of 6 pairs")
    # Half-width 0.022 < target / 2 = 0.025: any difference is below 5 points.
    small = sequential_decision(noisy, 3, 10, target_effect=0.05)
    assert small.stop and "smaller than the target 0.05" in small.reason
    with pytest.raises(ValueError, match="min_pairs <= max_pairs"):
        sequential_decision([], 1, 10)
    with pytest.raises(ValueError, match="target_effect"):
        sequential_decision([], 2, 10, target_effect=0.0)
