"""Comparisons of arms over seeds: paired statistics, verdicts in words and a table.

Imported by the API process, which never imports torch: this module needs only numpy and
scipy (imported when a summary is computed). Metric values are fractions in [0, 1], as
COCOeval gives them; tables and verdicts show them x100 ("AP points"). The statistics are
defined in ``docs/comparisons.md``.
"""

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ae_model.compare import stats as cs
from ae_model.compare.image_bootstrap import ImageNoise, image_noise
from ae_model.compare.seed_checks import SeedControl, check_seed_control

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

NO_RESULT = "no result (job failed or not finished)"

_WIDTH = 100  # longest line of format_table's prose (verdicts and notes are wrapped)


@dataclass
class ArmResult:
    """Final metrics of each completed seed of one arm: ``per_seed[seed][metric] = value``.

    Seeds whose job failed are simply absent; COCOeval's -1 ("no objects of that size") and
    non-finite values count as missing.
    """

    name: str
    per_seed: dict[int, dict[str, Any]]
    """A job's ``result``: its metrics, and what else it recorded (``fingerprints``,
    ``image_bootstrap``)."""


@dataclass(frozen=True)
class ArmStats:
    """One arm's values of one metric over its seeds."""

    arm: str
    metric: str
    per_seed: dict[int, float]
    """Seed -> value, for the seeds with a valid value."""
    missing: dict[int, str]
    """Seed -> why the seed has no value (a -1, a metric not reported); failed seeds, absent
    from the arm's results, are not listed here."""
    n: int
    mean: float | None
    std: float | None
    """Sample standard deviation (ddof=1); None when ``n < 2``."""


@dataclass(frozen=True)
class PairedDifference:
    """``arm - reference`` of one metric over the seeds with a valid value in both arms."""

    arm: str
    reference: str
    metric: str
    per_seed: dict[int, float]
    unpaired: dict[int, str]
    """Seed -> why it was left out, for seeds that either arm has but the pair lacks."""
    n: int
    mean: float | None
    std: float | None
    ci: tuple[float, float] | None
    """Confidence interval of the mean difference (t distribution, n-1 dof); None when n < 2."""
    p_value: float | None
    """Two-sided paired t-test; None when n < 2. Identical differences: 1.0 if all are 0, else
    0.0 (the t statistic is 0/0 or d/0 there)."""
    p_holm: float | None
    """``p_value`` Holm-adjusted across the non-reference arms of the same metric."""
    detectable: float | None
    """Minimum detectable effect: the smallest true difference the paired t-test over these
    ``n`` pairs, with spread ``std``, finds with 80% power at the confidence level."""
    pairs_needed: int | None
    """Pairs with which the t-test finds the summary's ``target_effect`` with 80% power, were
    the spread ``std``; None without a target."""
    bootstrap_ci: tuple[float, float] | None
    """Percentile bootstrap interval of the mean over seed pairs (seeded)."""
    p_improvement: float | None
    """Share of pairs where the arm beats the reference (ties count half)."""
    p_improvement_ci: tuple[float, float] | None
    """Wilson score interval of ``p_improvement``."""
    wilcoxon_p: float | None
    """Two-sided Wilcoxon signed-rank p (1.0 when every difference is 0). All but ``p_value``'s
    Holm adjustment are None when n < 2."""


@dataclass(frozen=True)
class MetricSummary:
    """Every arm's statistics of one metric, the paired differences and the seed noise."""

    metric: str
    arms: dict[str, ArmStats]
    differences: dict[str, PairedDifference]
    """Keyed by non-reference arm."""
    seed_noise: float | None
    """Std over seeds of the reference arm: the noise a single run carries."""
    mean_arm_std: float | None
    """Mean of the per-arm stds (arms with at least 2 seeds)."""


@dataclass(frozen=True)
class ComparisonSummary:
    """Result of :func:`summarize`; ``to_dict()`` is what the API returns."""

    reference: str
    arms: tuple[str, ...]
    headline: str
    confidence: float
    per_metric: dict[str, MetricSummary]
    verdicts: dict[str, str]
    """Keyed by non-reference arm: the headline metric's difference in words."""
    target_effect: float | None
    """The difference ``pairs_needed`` is computed for, if one was asked for."""
    seed_control: SeedControl | None = None
    """Whether the arms of each seed started alike and different seeds did not."""
    image_noise: ImageNoise | None = None
    """How much of the AP difference's uncertainty comes from the validation images."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (no NaN or inf: missing numbers are None; seeds as string keys)."""
        return {
            "reference": self.reference,
            "arms": list(self.arms),
            "headline": self.headline,
            "confidence": self.confidence,
            "power": cs.POWER,
            "target_effect": self.target_effect,
            "metrics": {
                name: {
                    "arms": {arm: _arm_dict(s) for arm, s in m.arms.items()},
                    "differences": {arm: _diff_dict(d) for arm, d in m.differences.items()},
                    "seed_noise": _finite(m.seed_noise),
                    "mean_arm_std": _finite(m.mean_arm_std),
                }
                for name, m in self.per_metric.items()
            },
            "verdicts": dict(self.verdicts),
            "seed_control": None if self.seed_control is None else self.seed_control.to_dict(),
            "image_noise": None if self.image_noise is None else self.image_noise.to_dict(),
        }


def summarize(
    arms: Sequence[ArmResult],
    reference: str,
    metrics: Sequence[str] = METRICS,
    confidence: float = 0.95,
    target_effect: float | None = None,
) -> ComparisonSummary:
    """Per-arm statistics, paired differences to ``reference`` and verdicts.

    ``metrics[0]`` is the headline metric the verdicts speak of. Arms are paired by seed: a
    seed counts for a metric only where both arms have a valid value for it. With
    ``target_effect`` (a fraction: 0.01 = 1 AP point), each difference also says how many
    pairs would detect a difference that large.
    """
    names = [arm.name for arm in arms]
    if len(names) < 2:
        raise ValueError(f"a comparison needs at least two arms, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    if reference not in names:
        raise ValueError(f"reference arm {reference!r} is not one of the arms {names}")
    if not metrics or len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics must be a non-empty list without repeats, got {list(metrics)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if target_effect is not None and not 0 < target_effect <= 1:
        raise ValueError(
            f"target_effect is a metric difference as a fraction (0.01 = 1 AP point), "
            f"got {target_effect}"
        )

    per_metric: dict[str, MetricSummary] = {}
    for metric in metrics:
        stats = {arm.name: _arm_stats(arm, metric) for arm in arms}
        differences = _holm(
            {
                name: _paired_difference(stats[name], stats[reference], confidence, target_effect)
                for name in names
                if name != reference
            }
        )
        stds = [s.std for s in stats.values() if s.std is not None]
        per_metric[metric] = MetricSummary(
            metric=metric,
            arms=stats,
            differences=differences,
            seed_noise=stats[reference].std,
            mean_arm_std=float(np.mean(stds)) if stds else None,
        )
    headline = per_metric[metrics[0]]
    verdicts = {
        arm: " ".join(
            (_verdict(diff, headline.seed_noise, confidence), _power_words(diff, target_effect))
        )
        for arm, diff in headline.differences.items()
    }
    return ComparisonSummary(
        reference=reference,
        arms=tuple(names),
        headline=metrics[0],
        confidence=confidence,
        per_metric=per_metric,
        verdicts=verdicts,
        target_effect=target_effect,
        **_seed_and_image_checks(arms, reference, per_metric),
    )


def _seed_and_image_checks(
    arms: Sequence[ArmResult], reference: str, per_metric: Mapping[str, MetricSummary]
) -> dict[str, Any]:
    """The summary's ``seed_control`` and ``image_noise`` (AP pairs by seed, where AP is one
    of the metrics)."""
    per_arm = {arm.name: arm.per_seed for arm in arms}
    ap = per_metric.get("AP")
    seed_differences = {a: d.per_seed for a, d in ap.differences.items()} if ap else {}
    return {
        "seed_control": check_seed_control(per_arm),
        "image_noise": image_noise(per_arm, reference, seed_differences),
    }


def _why_missing(metrics: Mapping[str, float], metric: str) -> str | None:
    """None if ``metrics[metric]`` is a usable value, else the reason it is not."""
    if metric not in metrics:
        return "not reported"
    try:
        value = float(metrics[metric])
    except (TypeError, ValueError):
        return f"not a number ({metrics[metric]!r})"
    if not math.isfinite(value):
        return f"not a finite number ({value})"
    if value < 0:  # COCOeval's -1: the evaluation set has no objects in this area range
        return f"{value:g} (COCOeval: no objects of that size)"
    return None


def _arm_stats(arm: ArmResult, metric: str) -> ArmStats:
    values: dict[int, float] = {}
    missing: dict[int, str] = {}
    for seed in sorted(arm.per_seed):
        reason = _why_missing(arm.per_seed[seed], metric)
        if reason is None:
            values[seed] = float(arm.per_seed[seed][metric])
        else:
            missing[seed] = reason
    x = np.array(list(values.values()), dtype=float)
    return ArmStats(
        arm=arm.name,
        metric=metric,
        per_seed=values,
        missing=missing,
        n=len(x),
        mean=float(x.mean()) if len(x) else None,
        std=float(x.std(ddof=1)) if len(x) >= 2 else None,
    )


def _paired_difference(
    stats: ArmStats, ref: ArmStats, confidence: float, target_effect: float | None
) -> PairedDifference:
    """``stats.arm - ref.arm`` over the seeds where both have a valid value; ``p_holm`` is
    the unadjusted p until :func:`_holm` adjusts it."""
    from scipy import stats as st  # scipy.stats takes about a second to import

    seeds = sorted(set(stats.per_seed) & set(ref.per_seed))
    seen = set(stats.per_seed) | set(stats.missing) | set(ref.per_seed) | set(ref.missing)
    unpaired: dict[int, str] = {}
    for seed in sorted(seen - set(seeds)):
        reasons = [
            f"{s.arm}: {s.missing.get(seed, NO_RESULT)}"
            for s in (ref, stats)
            if seed not in s.per_seed
        ]
        unpaired[seed] = "; ".join(reasons)
    a = np.array([stats.per_seed[s] for s in seeds], dtype=float)
    r = np.array([ref.per_seed[s] for s in seeds], dtype=float)
    d = a - r
    n = len(d)
    mean = float(d.mean()) if n else None
    std = p_value = None
    ci: tuple[float, float] | None = None
    if n >= 2 and np.all(d == d[0]):
        # Zero spread: t is 0/0 (all 0) or d/0; the limits are p = 1 and p = 0.
        mean, std = float(d[0]), 0.0
        ci, p_value = (mean, mean), 1.0 if mean == 0 else 0.0
    elif n >= 2:
        centre, std = float(d.mean()), float(d.std(ddof=1))
        half = float(st.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
        ci = (centre - half, centre + half)
        p_value = float(st.ttest_rel(a, r).pvalue)
    return PairedDifference(
        arm=stats.arm,
        reference=ref.arm,
        metric=stats.metric,
        per_seed={s: float(v) for s, v in zip(seeds, d, strict=True)},
        unpaired=unpaired,
        n=n,
        mean=mean,
        std=std,
        ci=ci,
        p_value=p_value,
        p_holm=p_value,
        **_more_statistics(d, std, confidence, target_effect),
    )


def _more_statistics(
    d: np.ndarray, std: float | None, confidence: float, target_effect: float | None
) -> dict[str, Any]:
    """The power figures and the intervals beside the t-interval; None when ``len(d) < 2``."""
    if len(d) < 2:
        return dict.fromkeys(
            ("detectable", "pairs_needed", "bootstrap_ci", "p_improvement", "p_improvement_ci",
             "wilcoxon_p"),
        )  # fmt: skip
    share, share_ci = cs.probability_of_improvement(d, confidence)
    return {
        "detectable": cs.detectable_effect(std, len(d), confidence),
        "pairs_needed": cs.pairs_needed(std, target_effect, confidence),
        "bootstrap_ci": cs.bootstrap_ci(d, confidence),
        "p_improvement": share,
        "p_improvement_ci": share_ci,
        "wilcoxon_p": cs.wilcoxon_p(d),
    }


def _holm(differences: dict[str, PairedDifference]) -> dict[str, PairedDifference]:
    adjusted = cs.holm({arm: d.p_value for arm, d in differences.items()})
    return {arm: replace(d, p_holm=adjusted[arm]) for arm, d in differences.items()}


def _points(value: float, signed: bool = False, decimals: int = 1) -> str:
    """A fraction as points (x100); ``+ 0.0`` turns -0.0 into 0.0."""
    return f"{value * 100 + 0.0:{'+' if signed else ''}.{decimals}f}"


def _format_p(p: float | None) -> str:
    if p is None:
        return "p=n/a"
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def _arms(n: int) -> str:
    return "the one arm" if n == 1 else f"the {n} arms"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _verdict(diff: PairedDifference, seed_noise: float | None, confidence: float) -> str:
    """The headline difference in words; a gain or loss only when the CI excludes 0."""
    m, label = diff.metric, f"{diff.arm} vs {diff.reference}"
    level = f"{confidence * 100:g}% CI"
    noise = "unknown" if seed_noise is None else f"±{_points(seed_noise)} {m}"
    if diff.n < 2 or diff.ci is None or diff.mean is None:
        single = (
            f"; the one pair gave {_points(diff.mean, True)} {m}, which one run cannot tell "
            "from seed noise"
            if diff.mean is not None
            else ""
        )
        return (
            f"{label}: cannot tell with {diff.n} paired {'seed' if diff.n == 1 else 'seeds'}: "
            f"run at least 2 (better 5) seeds per arm{single}."
        )
    low, high = diff.ci
    ci = f"{level} [{_points(low, True)}, {_points(high, True)}]"
    if low <= 0 <= high:
        if all(v == 0 for v in diff.per_seed.values()):
            said = f"identical {m} on every paired seed ({ci}, {_format_p(diff.p_value)})"
        else:
            said = (
                f"mean {_points(diff.mean, True)} {m}, {ci} includes 0, {_format_p(diff.p_value)}"
            )
        return (
            f"{label}: no difference detectable with {_seeds(diff.n)}: {said}; "
            f"seed noise is {noise}."
        )
    kind = "gain" if diff.mean > 0 else "loss"
    if seed_noise is None:
        size = f"a {kind} (seed noise unknown)"
    elif abs(diff.mean) > seed_noise:
        size = f"a {kind} larger than seed noise ({noise})"
    else:
        size = f"a {kind} within seed noise ({noise}) but consistent across the paired seeds"
    return (
        f"{label}: {_points(diff.mean, True)} {m}, {ci}, {_format_p(diff.p_value)} over "
        f"{_seeds(diff.n)}: {size}."
    )


def _power_words(diff: PairedDifference, target_effect: float | None) -> str:
    """What the comparison could have detected, and how many pairs a target would need."""
    if diff.detectable is None:
        return "Power and the detectable effect cannot be computed with fewer than 2 pairs."
    if diff.std == 0:
        return "With no spread in the paired differences, any nonzero difference is detected."
    m, power = diff.metric, f"{cs.POWER * 100:g}%"
    said = (
        f"At {power} power these {_seeds(diff.n)} could not have detected less than "
        f"{_points(diff.detectable)} {m}"
    )
    if target_effect is not None and diff.pairs_needed is not None:
        said += f"; about {diff.pairs_needed} pairs would detect {_points(target_effect)} {m}"
    return said + "."


def format_table(summary: ComparisonSummary) -> str:
    """Plain text: per metric each arm's mean ± std (n) and each arm's paired difference to
    the reference with CI and p (all x100), then the verdicts and the seeds left out."""
    ref = summary.reference
    others = [a for a in summary.arms if a != ref]
    level = f"{summary.confidence * 100:g}% CI"
    header = ["metric", *summary.arms, *(f"{a} - {ref}" for a in others)]
    rows = [header]
    for metric, m in summary.per_metric.items():
        row = [metric]
        for arm in summary.arms:
            s = m.arms[arm]
            if s.mean is None:
                row.append("n/a")
            else:
                spread = "" if s.std is None else f" ± {_points(s.std, decimals=2)}"
                row.append(f"{_points(s.mean, decimals=2)}{spread} (n={s.n})")
        for arm in others:
            d = m.differences[arm]
            if d.mean is None:
                row.append("n/a")
                continue
            cell = _points(d.mean, True, 2)
            if d.ci is not None:
                low, high = (_points(v, True, 2) for v in d.ci)
                cell += f" [{low}, {high}] {_format_p(d.p_value)}"
            row.append(f"{cell} (n={d.n})")
        rows.append(row)
    lines = [
        *_wrap(
            f"points (x100): mean ± std over seeds (n); difference = arm - {ref} paired by "
            f"seed, {level}, paired t-test p (Holm-adjusted across arms below)"
        ),
        *_aligned(rows),
        *_more_statistics_table(summary),
        "",
        *(line for v in summary.verdicts.values() for line in _wrap(v, indent="  ")),
    ]
    head = summary.per_metric[summary.headline]
    if head.seed_noise is not None:
        spread = f"±{_points(head.seed_noise, decimals=2)} in {ref}"
        if head.mean_arm_std is not None:
            spread += f", ±{_points(head.mean_arm_std, decimals=2)} averaged over arms"
        lines.append(f"seed noise ({summary.headline} std over seeds): {spread}")
    if summary.image_noise is not None:
        lines.extend(summary.image_noise.lines())
    if summary.seed_control is not None:
        lines.extend(summary.seed_control.lines())
    lines.extend(_per_seed_table(summary))
    lines.extend(_left_out_notes(summary))
    return "\n".join(lines)


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, _WIDTH, subsequent_indent=indent, break_on_hyphens=False)


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _more_statistics_table(summary: ComparisonSummary) -> list[str]:
    """Per non-reference arm, the headline difference's other intervals, tests and power."""
    ref, head, c = summary.reference, summary.headline, summary.confidence
    level = f"{c * 100:g}%"
    target = summary.target_effect
    header = ["arm", f"bootstrap {level} CI", f"P(arm > {ref}) [{level}]", "Wilcoxon",
              "Holm t p", "detectable"]  # fmt: skip
    if target is not None:
        header.append(f"pairs for {_points(target)}")
    rows = [header]
    for arm, d in summary.per_metric[head].differences.items():
        if d.bootstrap_ci is None or d.p_improvement_ci is None or d.p_improvement is None:
            rows.append([arm, *("n/a" for _ in header[1:])])
            continue
        rows.append([
            arm,
            "[{}, {}]".format(*(_points(v, True, 2) for v in d.bootstrap_ci)),
            "{:.2f} [{:.2f}, {:.2f}]".format(d.p_improvement, *d.p_improvement_ci),
            _format_p(d.wilcoxon_p), _format_p(d.p_holm), _points(d.detectable or 0.0, decimals=2),
            *([str(d.pairs_needed)] if target is not None else []),
        ])  # fmt: skip
    # The smallest two-sided signed-rank p over n nonzero pairs is 2 / 2^n.
    wilcoxon_n = math.ceil(math.log2(2 / (1 - c)))
    note = (
        f"{head}, arm - {ref} (x100): bootstrap = percentile over seed pairs "
        f"({cs.BOOTSTRAP_RESAMPLES} resamples, seed {cs.BOOTSTRAP_SEED}); P(arm > {ref}) = "
        f"share of pairs (ties half), Wilson interval; Wilcoxon signed-rank p (below "
        f"{1 - c:g} only from {wilcoxon_n} nonzero pairs); Holm t p = paired t-test p "
        f"Holm-adjusted across {_arms(len(rows) - 1)}; detectable = smallest difference "
        f"found with {cs.POWER * 100:g}% power (noncentral t)"
    )
    return ["", *_wrap(note), *_aligned(rows)]


def _per_seed_table(summary: ComparisonSummary) -> list[str]:
    """Each seed's headline metric (and AP50 where there is one) per arm, x100, and each arm's
    difference to the reference for that seed: the values the means and CIs come from."""
    metrics = [summary.headline, *(["AP50"] if summary.headline != "AP50" else [])]
    metrics = [m for m in metrics if m in summary.per_metric]
    others = [a for a in summary.arms if a != summary.reference]
    seeds = sorted({s for m in metrics for a in summary.per_metric[m].arms.values()
                    for s in a.per_seed})  # fmt: skip
    if not seeds:
        return []

    def cell(values: list[float | None], signed: bool = False) -> str:
        return " / ".join("n/a" if v is None else _points(v, signed) for v in values)

    rows = [["seed", *summary.arms, *(f"{a} - {summary.reference}" for a in others)]]
    for seed in seeds:
        row = [str(seed)]
        for arm in summary.arms:
            row.append(cell([summary.per_metric[m].arms[arm].per_seed.get(seed) for m in metrics]))
        for arm in others:
            diffs = [summary.per_metric[m].differences[arm].per_seed.get(seed) for m in metrics]
            row.append(cell(diffs, signed=True))
        rows.append(row)
    return ["", f"per seed, {' / '.join(metrics)} (x100):", *_aligned(rows)]


def _left_out_notes(summary: ComparisonSummary) -> list[str]:
    """One line per metric that no run has (APl on a set without large objects, say), then
    one line per arm, seed and reason: the other metrics that seed was left out of."""
    notes = []
    undefined = set()
    for metric, m in summary.per_metric.items():
        if all(stats.n == 0 for stats in m.arms.values()):
            undefined.add(metric)
            reasons = sorted({r for stats in m.arms.values() for r in stats.missing.values()})
            notes.append(f"{metric}: no value in any run ({'; '.join(reasons) or 'not reported'})")
    for arm in summary.arms:
        if arm == summary.reference:
            continue
        grouped: dict[tuple[int, str], list[str]] = {}
        for metric, m in summary.per_metric.items():
            if metric in undefined:
                continue
            for seed, reason in m.differences[arm].unpaired.items():
                grouped.setdefault((seed, reason), []).append(metric)
        for (seed, reason), metrics in sorted(grouped.items()):
            which = "all metrics" if len(metrics) == len(summary.per_metric) else ", ".join(metrics)
            notes.append(f"seed {seed} left out of {arm} - {summary.reference} ({which}): {reason}")
    return notes


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _seed_map(values: Mapping[int, Any]) -> dict[str, Any]:
    return {str(seed): _finite(v) if isinstance(v, float) else v for seed, v in values.items()}


def _arm_dict(s: ArmStats) -> dict[str, Any]:
    return {
        "per_seed": _seed_map(s.per_seed),
        "missing": _seed_map(s.missing),
        "n": s.n,
        "mean": _finite(s.mean),
        "std": _finite(s.std),
    }


def _diff_dict(d: PairedDifference) -> dict[str, Any]:
    return {
        "reference": d.reference,
        "per_seed": _seed_map(d.per_seed),
        "unpaired": _seed_map(d.unpaired),
        "n": d.n,
        "mean": _finite(d.mean),
        "std": _finite(d.std),
        "ci": _pair(d.ci),
        "p_value": _finite(d.p_value),
        "p_holm": _finite(d.p_holm),
        "detectable": _finite(d.detectable),
        "pairs_needed": d.pairs_needed,
        "bootstrap_ci": _pair(d.bootstrap_ci),
        "p_improvement": _finite(d.p_improvement),
        "p_improvement_ci": _pair(d.p_improvement_ci),
        "wilcoxon_p": _finite(d.wilcoxon_p),
    }


def _pair(interval: tuple[float, float] | None) -> list[float | None] | None:
    return None if interval is None else [_finite(interval[0]), _finite(interval[1])]
