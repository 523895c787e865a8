"""A comparison as a picture: per-seed values, paired differences and learning curves.

matplotlib is imported when a plot is drawn, so importing this module costs nothing.
"""

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np

from ae_model.compare import stats as cs
from ae_model.compare.summary import ComparisonSummary

SMOOTH_FRACTION = 0.05  # of a loss curve's points, the window of its rolling mean


def plot_comparison(
    summary: ComparisonSummary,
    curves: Mapping[str, Sequence[Mapping[str, Sequence[float]]]] | None,
    path_or_file: str | os.PathLike[str] | BinaryIO,
    setting: str | None = None,
) -> None:
    """Writes a PNG: the headline metric per seed per arm (lines join a seed across arms), the
    paired differences per metric with CIs, the headline difference's intervals as seed pairs
    accrue (the sequence seeds until decided stops by), and with ``curves`` the learning
    curves per arm,
    under a title naming the arms and ``setting`` (what was trained on what, e.g.
    ``"yolov3-tiny-small on quickstart digits"``).

    ``curves[arm]`` holds one dict per seed with ``iteration`` and ``loss`` lists and
    optionally ``val_iteration`` and ``val_AP``. Missing seeds, arms or curves are skipped.
    """
    # The Agg canvas on a bare Figure: no pyplot, so no global backend or figure state is
    # touched in the process that imports this (the API serves plots from several threads).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    has_curves = curves is not None and any(
        len(run.get(key, ()))
        for arm in summary.arms
        for run in curves.get(arm, ())
        for key in ("iteration", "val_iteration")
    )
    fig = Figure(figsize=(18, 9.5 if has_curves else 5), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(_title(summary, setting), fontsize="large")
    # Three panels above (2 of 6 columns each), the two learning curves below (3 each).
    grid = fig.add_gridspec(2 if has_curves else 1, 6)
    _plot_per_seed(fig.add_subplot(grid[0, 0:2]), summary)
    _plot_differences(fig.add_subplot(grid[0, 2:4]), summary)
    _plot_interval_sequence(fig.add_subplot(grid[0, 4:6]), summary)
    if curves is not None and has_curves:
        loss, val = fig.add_subplot(grid[1, 0:3]), fig.add_subplot(grid[1, 3:6])
        _plot_curves(loss, val, summary, curves)
    fig.savefig(path_or_file, format="png", dpi=100)


def _title(summary: ComparisonSummary, setting: str | None) -> str:
    seeds = {s for m in summary.per_metric.values() for a in m.arms.values() for s in a.per_seed}
    arms = " vs ".join(summary.arms)
    counted = f"{arms}, {len(seeds)} seed{'s' if len(seeds) != 1 else ''} with results"
    return f"{setting}: {counted}" if setting else counted


def _arm_colour(summary: ComparisonSummary, arm: str) -> str:
    return f"C{summary.arms.index(arm) % 10}"


def _plot_per_seed(ax: Any, summary: ComparisonSummary) -> None:
    from matplotlib import colormaps

    m = summary.per_metric[summary.headline]
    x = np.arange(len(summary.arms))
    seeds = sorted({s for arm in summary.arms for s in m.arms[arm].per_seed})
    cmap = colormaps["viridis"]
    for i, seed in enumerate(seeds):
        # NaN breaks the line where an arm lacks this seed.
        y = [100 * m.arms[arm].per_seed.get(seed, math.nan) for arm in summary.arms]
        colour = cmap(i / max(1, len(seeds) - 1))
        ax.plot(x, y, marker="o", color=colour, linewidth=1, alpha=0.8, label=f"seed {seed}")
    for i, arm in enumerate(summary.arms):
        s = m.arms[arm]
        if s.mean is not None:
            ax.errorbar(
                i + 0.12, 100 * s.mean, yerr=None if s.std is None else 100 * s.std,
                fmt="s", color="black", capsize=4, label="mean ± std" if i == 0 else None,
            )  # fmt: skip
    if not seeds:
        ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(x, summary.arms, rotation=15 if max(map(len, summary.arms)) > 10 else 0)
    ax.set_xlim(-0.5, len(summary.arms) - 0.5)
    ax.set_ylabel(f"{summary.headline} (points)")
    ax.set_title(f"{summary.headline} per seed (a line joins one seed across arms)")
    if seeds and len(seeds) <= 12:  # two columns past six seeds: half the height over the data
        ax.legend(fontsize="small", ncol=1 if len(seeds) <= 6 else 2)


def _plot_differences(ax: Any, summary: ComparisonSummary) -> None:
    others = [a for a in summary.arms if a != summary.reference]
    metrics = list(summary.per_metric)
    width = 0.7 / max(1, len(others))
    ax.axhline(0, color="grey", linewidth=1)
    for j, arm in enumerate(others):
        xs, ys, low, high, xs_single, ys_single = [], [], [], [], [], []
        for i, metric in enumerate(metrics):
            d = summary.per_metric[metric].differences[arm]
            if d.mean is None:
                continue
            x = i - 0.35 + width * (j + 0.5)
            if d.ci is None:
                xs_single.append(x)
                ys_single.append(100 * d.mean)
            else:
                xs.append(x)
                ys.append(100 * d.mean)
                low.append(100 * (d.mean - d.ci[0]))
                high.append(100 * (d.ci[1] - d.mean))
        colour = _arm_colour(summary, arm)
        if xs:
            ax.errorbar(xs, ys, yerr=[low, high], fmt="o", color=colour, capsize=4, label=arm)
        if xs_single:  # one pair: no interval
            ax.plot(xs_single, ys_single, "o", mfc="none", color=colour,
                    label=f"{arm} (1 pair, no CI)")  # fmt: skip
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_xlim(-0.5, len(metrics) - 0.5)
    ax.set_ylabel(f"points (x100), arm - {summary.reference}")
    ax.set_title(f"paired difference vs {summary.reference}, {summary.confidence * 100:g}% CI")
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no paired seeds yet", ha="center", va="center", transform=ax.transAxes)


def _plot_interval_sequence(ax: Any, summary: ComparisonSummary) -> None:
    """The headline difference's intervals as seed pairs accrue (seeds in order, as rounds add
    them): after each pair, the running mean, the fixed-n t-interval (valid for that n alone)
    and the anytime-valid confidence sequence that seeds until decided stop by, at each arm's
    level (Bonferroni over the arms, as the stopping rule uses)."""
    from scipy import stats as sps

    others = [a for a in summary.arms if a != summary.reference]
    level = 1 - (1 - summary.confidence) / max(1, len(others))
    ax.axhline(0, color="grey", linewidth=1)
    drawn = False
    # The y range shows the later half of the pairs: the intervals of the first few pairs are
    # tens of times wider (t with 1 degree of freedom) and would flatten everything after.
    shown: list[float] = [0.0]
    for arm in others:
        d = summary.per_metric[summary.headline].differences[arm]
        values = 100 * np.array([d.per_seed[seed] for seed in sorted(d.per_seed)])
        if len(values) < 2:
            continue
        n = np.arange(2, len(values) + 1)
        mean = np.array([values[:k].mean() for k in n])
        half = np.array([values[:k].std(ddof=1) / math.sqrt(k) for k in n]) * sps.t.ppf(
            (1 + level) / 2, n - 1
        )
        sequence = np.array([cs.confidence_sequence(list(values[:k]), level) for k in n])
        colour = _arm_colour(summary, arm)
        ax.plot(n, mean, "o-", color=colour, label=f"{arm}: mean")
        ax.plot(n, mean - half, "--", color=colour, linewidth=0.8, label="t-interval (fixed n)")
        ax.plot(n, mean + half, "--", color=colour, linewidth=0.8)
        finite = np.isfinite(sequence).all(axis=1)
        ax.fill_between(n[finite], sequence[finite, 0], sequence[finite, 1], color=colour,
                        alpha=0.15, label="confidence sequence (any n)")  # fmt: skip
        later = n >= max(2, math.ceil(len(values) / 2))
        shown += [*mean[later], *(mean - half)[later], *(mean + half)[later]]
        shown += list(sequence[later & finite].ravel())
        drawn = True
    if drawn:
        low, high = min(shown), max(shown)
        margin = 0.15 * (high - low) or 1.0
        ax.set_ylim(low - margin, high + margin)
    ax.set_xlabel("seed pairs")
    ax.set_ylabel(f"{summary.headline} difference (points), arm - {summary.reference}")
    ax.set_title(f"{summary.headline} difference as pairs accrue, {level * 100:.3g}%")
    if drawn:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "fewer than 2 pairs", ha="center", va="center", transform=ax.transAxes)


def _plot_curves(
    ax_loss: Any,
    ax_val: Any,
    summary: ComparisonSummary,
    curves: Mapping[str, Sequence[Mapping[str, Sequence[float]]]],
) -> None:
    plotted = {"loss": False, "val": False}
    positive = True
    for arm in summary.arms:
        colour = _arm_colour(summary, arm)
        series = {
            "loss": [_series(run, "iteration", "loss") for run in curves.get(arm, ())],
            "val": [_series(run, "val_iteration", "val_AP") for run in curves.get(arm, ())],
        }
        for key, ax, scale in (("loss", ax_loss, 1.0), ("val", ax_val, 100.0)):
            runs = [(x, y * scale) for x, y in series[key] if len(x)]
            if not runs:
                continue
            for x, y in runs:
                ax.plot(x, y, color=colour, linewidth=0.5, alpha=0.2)
            grid, mean = _mean_curve(runs)
            if key == "val":
                ax.plot(grid, mean, color=colour, linewidth=1.8, marker="o", label=arm)
            else:  # a step's loss is noisy: the mean over seeds faint, smoothed over it
                ax.plot(grid, mean, color=colour, linewidth=0.8, alpha=0.4)
                # Above every arm's faint lines, so each smoothed curve stays visible.
                ax.plot(grid, _rolling_mean(mean), color=colour, linewidth=2, label=arm, zorder=3)
                positive = positive and bool(np.all(mean > 0))
            plotted[key] = True
    log_scale = plotted["loss"] and positive
    if log_scale:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss per image" + (" (log scale)" if log_scale else ""))
    ax_loss.set_title(
        f"training loss: mean over seeds, smoothed over {SMOOTH_FRACTION:.0%} of the run "
        "(faint: raw mean and each seed)", fontsize="medium",
    )  # fmt: skip
    if plotted["loss"]:
        ax_loss.legend(fontsize="small")
    ax_val.set_xlabel("iteration")
    ax_val.set_ylabel("AP (points)")
    ax_val.set_title("validation AP: mean over seeds (thin: each seed)")
    if plotted["val"]:
        ax_val.legend(fontsize="small")
    else:
        ax_val.text(0.5, 0.5, "no validation curves", ha="center", va="center",
                    transform=ax_val.transAxes)  # fmt: skip


def _series(run: Mapping[str, Sequence[float]], x_key: str, y_key: str) -> tuple[Any, Any]:
    """``(x, y)`` sorted by x, finite points only."""
    x = np.asarray(run.get(x_key, ()), dtype=float)
    y = np.asarray(run.get(y_key, ()), dtype=float)
    if len(x) != len(y):
        raise ValueError(f"curve has {len(x)} {x_key} values but {len(y)} {y_key} values")
    keep = np.isfinite(x) & np.isfinite(y)
    order = np.argsort(x[keep], kind="stable")
    return x[keep][order], y[keep][order]


def _rolling_mean(y: Any) -> Any:
    """``y`` averaged over a centred window of ``SMOOTH_FRACTION`` of its points (the ends
    repeat the first and last value, so the curve keeps its length and does not lag)."""
    window = max(1, round(len(y) * SMOOTH_FRACTION))
    padded = np.pad(y, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def _mean_curve(runs: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    """Mean over seeds on the union of their iterations; a seed counts only inside its own
    range (a failed seed stops early and does not drag the mean after it stopped)."""
    grid = np.unique(np.concatenate([x for x, _ in runs]))
    stacked = np.full((len(runs), len(grid)), np.nan)
    for k, (x, y) in enumerate(runs):
        inside = (grid >= x[0]) & (grid <= x[-1])
        stacked[k, inside] = np.interp(grid[inside], x, y)
    counts = np.sum(~np.isnan(stacked), axis=0)
    return grid, np.nansum(stacked, axis=0) / counts
