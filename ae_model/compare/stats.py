"""Statistics of paired seed differences beyond the paired t-interval: power and minimum
detectable effect, a bootstrap interval, the probability of improvement, a Wilcoxon
signed-rank test, Holm's adjustment, and an anytime-valid confidence sequence for deciding
when to stop adding seeds.

Like ``summary``, this module is imported by the API process: numpy here, scipy imported
inside the functions that need it. Formulas and references: ``docs/comparisons.md``.
"""

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

POWER = 0.8
"""Power at which the minimum detectable effect and the pairs needed are stated."""
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
"""The bootstrap is seeded so that a summary is the same every time it is computed."""
_POWER_GRID = 4096  # within 2e-5 of scipy's nct wherever that is finite
CS_PRIOR_VARIANCE = 4.0
"""tau^2 of the confidence sequence's N(0, tau^2) mixture over the standardised effect
mean/sd: the interval is finite from 4 pairs and about 1.75-1.9x the fixed-n t-interval
from 6 to 30 pairs (larger tau^2 helps at 3 pairs and costs width later)."""


@functools.lru_cache(maxsize=256)
def _critical_grid(df: int, confidence: float) -> np.ndarray:
    """t_crit * S at the mid-quantiles of S ~ chi_df / sqrt(df), shape ``(_POWER_GRID,)``; the
    chi quantiles are the slow part of a power evaluation, and brentq evaluates many."""
    from scipy import stats as st

    crit = float(st.t.ppf((1 + confidence) / 2, df))
    quantiles = (np.arange(_POWER_GRID) + 0.5) / _POWER_GRID
    return np.asarray(st.chi.ppf(quantiles, df) * crit / math.sqrt(df))


def _power(ncp: float, df: int, confidence: float) -> float:
    """Power of the two-sided t-test with ``df`` dof at noncentrality ``ncp``: the exact
    noncentral-t probability P(|Z + ncp| > t_crit S), averaged over S on a quantile grid
    (scipy's ``nct`` returns NaN at large noncentrality)."""
    from scipy.special import ndtr  # the normal cdf without scipy.stats' per-call checks

    s = _critical_grid(df, confidence)
    return float(np.mean(ndtr(ncp - s) + ndtr(-ncp - s)))


def detectable_effect(
    sd: float | None, n: int, confidence: float, power: float = POWER
) -> float | None:
    """Smallest true mean difference a two-sided paired t-test over ``n`` pairs with spread
    ``sd`` detects with probability ``power``; None when ``n < 2`` or ``sd`` is unknown."""
    if sd is None or n < 2:
        return None
    return _detectable_ncp(n, confidence, power) * sd / math.sqrt(n)


@functools.lru_cache(maxsize=1024)
def _detectable_ncp(n: int, confidence: float, power: float) -> float:
    """The noncentrality at which the test over ``n`` pairs has ``power``: the detectable
    effect is this times sd / sqrt(n), so every summary of the same n reuses one root search
    (a summary is recomputed on every read of a comparison)."""
    from scipy.optimize import brentq

    if _power(0.0, n - 1, confidence) >= power:
        return 0.0
    return float(brentq(lambda x: _power(x, n - 1, confidence) - power, 0.0, 1e3))


def pairs_needed(
    sd: float | None, target_effect: float | None, confidence: float, power: float = POWER
) -> int | None:
    """Fewest pairs (at least 2) with which the paired t-test detects a true difference of
    ``target_effect`` with probability ``power``, if the spread is ``sd``; None without both."""
    from scipy import stats as st

    if sd is None or target_effect is None:
        return None
    if sd == 0:
        return 2
    # The normal approximation undershoots the t-test's n slightly: start just below it.
    z = st.norm.ppf((1 + confidence) / 2) + st.norm.ppf(power)
    n = max(2, math.floor((z * sd / target_effect) ** 2) - 1)
    while _power(target_effect / sd * math.sqrt(n), n - 1, confidence) < power:
        n += 1
    return n


def bootstrap_ci(d: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``d`` (shape ``(n,)``, n >= 2), resampling
    pairs; seeded."""
    from scipy import stats as st

    result = st.bootstrap(
        (d,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=confidence,
        method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED),
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def probability_of_improvement(
    d: np.ndarray, confidence: float
) -> tuple[float, tuple[float, float]]:
    """Share of pairs with ``d > 0`` (ties count half) and its Wilson score interval."""
    from scipy import stats as st

    n = len(d)
    share = (np.sum(d > 0) + 0.5 * np.sum(d == 0)) / n
    z = float(st.norm.ppf((1 + confidence) / 2))
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return float(share), (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of ``d`` (zeros dropped; 1.0 when all are zero)."""
    from scipy import stats as st

    if not np.any(d != 0):
        return 1.0
    return float(st.wilcoxon(d).pvalue)


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment of the p-values that are not None, as one family."""
    known = sorted((p, key) for key, p in p_values.items() if p is not None)
    adjusted: dict[str, float | None] = {key: None for key in p_values}
    running = 0.0
    for rank, (p, key) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        adjusted[key] = running
    return adjusted


def confidence_sequence(d: Sequence[float], confidence: float) -> tuple[float, float]:
    """Anytime-valid interval for the mean of i.i.d. normal ``d`` with unknown variance after
    ``len(d)`` pairs: the set of means the scale-invariant t-mixture martingale (Lai 1976)
    does not reject at ``1 - confidence``. Infinite while there are too few pairs."""
    x = np.asarray(d, dtype=float)
    n, alpha, tau2 = len(x), 1 - confidence, CS_PRIOR_VARIANCE
    if n < 2:
        return -math.inf, math.inf
    # The martingale at mean m is (1 + n tau2)^(-1/2) (1 - r tau2 / (1 + n tau2))^(-n/2), with
    # r = n D^2 / (s^2 + D^2), D = mean - m, s^2 the ddof=0 variance; it stays below 1/alpha
    # exactly when r < b.
    k = (alpha * alpha / (1 + n * tau2)) ** (1 / n)
    b = (1 - k) * (1 + n * tau2) / tau2
    if b >= n:
        return -math.inf, math.inf
    half = float(x.std()) * math.sqrt(b / (n - b))
    return float(x.mean()) - half, float(x.mean()) + half


@dataclass(frozen=True)
class SequentialDecision:
    """Whether to stop adding seed pairs, and why."""

    stop: bool
    reason: str
    n: int
    interval: tuple[float, float]
    """The anytime-valid interval of the mean difference after ``n`` pairs (may be infinite)."""


def sequential_decision(
    differences: Sequence[float],
    min_pairs: int,
    max_pairs: int,
    target_effect: float | None = None,
    confidence: float = 0.95,
    shown_as: tuple[float, str] = (1.0, ""),
) -> SequentialDecision:
    """Stop or continue after the paired differences so far (one per round, in order).

    Stops when the confidence sequence excludes 0 (a gain or a loss), when its half-width is
    below ``target_effect / 2`` (any difference is smaller than the target), or at
    ``max_pairs``; never before ``min_pairs``. Valid under peeking after every pair: the
    chance that the interval ever excludes a true mean of 0 is at most ``1 - confidence``.
    ``shown_as`` (factor, unit) is how the reason writes the interval and the target, e.g.
    ``(100, " AP")`` for AP fractions; the returned interval is in the input's units.
    """
    if min_pairs < 2 or max_pairs < min_pairs:
        raise ValueError(f"need 2 <= min_pairs <= max_pairs, got {min_pairs} and {max_pairs}")
    if target_effect is not None and not target_effect > 0:
        raise ValueError(f"target_effect must be a positive difference, got {target_effect}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    n = len(differences)
    low, high = confidence_sequence(differences, confidence)
    factor, unit = shown_as
    level = (
        f"{confidence * 100:g}% confidence sequence [{low * factor:+.4g}, {high * factor:+.4g}]"
        f"{unit}"
    )
    if n < min_pairs:
        return SequentialDecision(False, f"{n} of at least {min_pairs} pairs", n, (low, high))
    if low > 0 or high < 0:
        kind = "gain" if low > 0 else "loss"
        return SequentialDecision(True, f"a {kind}: {level} excludes 0", n, (low, high))
    if target_effect is not None and (high - low) / 2 < target_effect / 2:
        target = f"{target_effect * factor:g}{unit}"
        said = f"any difference is smaller than the target {target}: {level}"
        return SequentialDecision(True, said, n, (low, high))
    if n >= max_pairs:
        return SequentialDecision(
            True, f"undecided at the maximum of {max_pairs} pairs: {level}", n, (low, high)
        )
    return SequentialDecision(False, f"undecided: {level} includes 0", n, (low, high))
