"""Comparison statistics against arithmetic done by hand; scipy only as a cross-check.

Values are fractions as COCOeval gives them (0.01 = 1 AP point). Closed forms used below:
with 2 dof, t_q = (2q - 1) / sqrt(2 q (1 - q)) and the two-sided p of t is 1 - t / sqrt(t^2 + 2);
with 1 dof, t_q = tan(pi (q - 1/2)) and p = 1 - (2 / pi) atan(t).
"""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from ae_model.compare import (
    METRICS,
    ArmResult,
    ComparisonSummary,
    format_table,
    plot_comparison,
    summarize,
)
from ae_model.compare.plot import _plot_interval_sequence, _rolling_mean, _title
from ae_model.compare.stats import confidence_sequence

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def arm(name: str, ap: dict[int, float], **other: dict[int, float]) -> ArmResult:
    """An arm whose AP per seed is ``ap``; other metrics default to the same value."""
    return ArmResult(
        name=name,
        per_seed={
            seed: {m: other[m][seed] if m in other else value for m in METRICS}
            for seed, value in ap.items()
        },
    )


# Reference AP 30, 26, 28 points: mean 28, deviations +2, -2, 0,
# sample var (4 + 4 + 0) / 2 = 4, std 2 points.
REF = {0: 0.30, 1: 0.26, 2: 0.28}


def test_paired_difference_by_hand() -> None:
    # Differences 1, 2, 3 points: mean 2, sd sqrt((1 + 0 + 1) / 2) = 1, se 1/sqrt(3) = 0.57735.
    # t_{0.975,2} = 0.95 / sqrt(2 * 0.975 * 0.025) = 4.302653; half width 4.302653 * 0.57735
    # = 2.48414, so CI 2 ± 2.484 = [-0.484, 4.484] points.
    # t = 2 / 0.57735 = 3.4641; p = 1 - 3.4641 / sqrt(12 + 2) = 1 - 3.4641 / 3.74166 = 0.07418.
    summary = summarize(
        [arm("baseline", REF), arm("AE", {0: 0.31, 1: 0.28, 2: 0.31})], reference="baseline"
    )
    d = summary.per_metric["AP"].differences["AE"]
    assert d.n == 3 and d.per_seed == pytest.approx({0: 0.01, 1: 0.02, 2: 0.03})
    assert d.mean == pytest.approx(0.02)
    assert d.std == pytest.approx(0.01)
    assert d.ci == pytest.approx((-0.00484138, 0.04484138), abs=1e-7)
    assert d.p_value == pytest.approx(0.0741799, abs=1e-6)
    # scipy cross-check of the same test.
    assert d.p_value == pytest.approx(
        stats.ttest_rel([0.31, 0.28, 0.31], [0.30, 0.26, 0.28]).pvalue
    )

    ref = summary.per_metric["AP"].arms["baseline"]
    assert ref.n == 3 and ref.mean == pytest.approx(0.28) and ref.std == pytest.approx(0.02)
    assert summary.per_metric["AP"].seed_noise == pytest.approx(0.02)
    # AE: 31, 28, 31 -> mean 30, deviations 1, -2, 1, var (1 + 4 + 1) / 2 = 3, std 1.732;
    # mean of the arm stds (2 + 1.732) / 2 = 1.866 points.
    assert summary.per_metric["AP"].mean_arm_std == pytest.approx(0.01866025, abs=1e-7)

    verdict = summary.verdicts["AE"]
    assert d.detectable is not None  # its value is checked by simulation in test_compare_stats
    assert verdict == (
        "AE vs baseline: no difference detectable with 3 seeds: mean +2.0 AP, "
        "95% CI [-0.5, +4.5] includes 0, p=0.07; seed noise is ±2.0 AP. At 80% power these "
        f"3 seeds could not have detected less than {d.detectable * 100:.1f} AP."
    )


def test_other_intervals_by_hand() -> None:
    # Differences 1, 2, 3 points. Bootstrap: a resample's mean is 1 point only when all three
    # draws are the 1, P = 1/27 = 3.7% > 2.5%, and likewise 3 points: the percentile interval
    # is [1, 3] points. All three pairs improve: P(improvement) = 1, Wilson lower bound
    # n / (n + z^2) = 3 / (3 + 1.959964^2) = 0.438503. Wilcoxon, exact: all 3 signed ranks
    # positive has probability 1/8, two-sided p = 0.25. One arm: Holm leaves p as it is.
    summary = summarize(
        [arm("baseline", REF), arm("AE", {0: 0.31, 1: 0.28, 2: 0.31})], reference="baseline"
    )
    d = summary.per_metric["AP"].differences["AE"]
    assert d.bootstrap_ci == pytest.approx((0.01, 0.03))
    assert d.p_improvement == 1.0
    assert d.p_improvement_ci == pytest.approx((0.438503, 1.0), abs=1e-6)
    assert d.wilcoxon_p == pytest.approx(0.25)
    assert d.p_holm == d.p_value
    assert d.pairs_needed is None  # no target_effect asked for


def test_holm_adjusts_the_headline_p_across_arms() -> None:
    # Same differences 1, 2, 3 points (t-test p = 0.07418) for "a"; "b" is the clear
    # 1.0-1.2-point gain (p = 0.0027435) on the same reference. Holm, two arms: the smaller p
    # doubles (0.005487), the larger is max(0.005487, 1 x 0.07418) = 0.07418.
    b = {s: v + GAINS[s] for s, v in REF.items()}
    summary = summarize(
        [arm("baseline", REF), arm("a", {0: 0.31, 1: 0.28, 2: 0.31}), arm("b", b)], "baseline"
    )
    diffs = summary.per_metric["AP"].differences
    assert diffs["b"].p_holm == pytest.approx(2 * 0.0027435, abs=2e-6)
    assert diffs["a"].p_holm == pytest.approx(0.0741799, abs=1e-6)
    assert "Holm-adjusted across the 2 arms" in " ".join(format_table(summary).split())


def test_identical_arms_are_no_difference_with_p_1() -> None:
    summary = summarize([arm("baseline", REF), arm("again", REF)], reference="baseline")
    for metric in METRICS:
        d = summary.per_metric[metric].differences["again"]
        assert d.mean == 0.0 and d.std == 0.0
        assert d.ci == (0.0, 0.0) and d.p_value == 1.0
    assert "no difference" in summary.verdicts["again"]
    assert "identical AP on every paired seed" in summary.verdicts["again"]


def test_identical_nonzero_differences_are_a_gain_with_p_0() -> None:
    # Binary-exact values, so both differences are exactly 0.125: zero spread, CI [d, d].
    summary = summarize(
        [arm("baseline", {0: 0.25, 1: 0.5}), arm("AE", {0: 0.375, 1: 0.625})], "baseline"
    )
    d = summary.per_metric["AP"].differences["AE"]
    assert d.ci == (0.125, 0.125) and d.p_value == 0.0 and d.std == 0.0
    assert "+12.5 AP, 95% CI [+12.5, +12.5], p<0.001 over 2 seeds: a gain" in summary.verdicts["AE"]


# Reference AP 30.0, 30.2, 30.4 points: std 0.2 points.
STEADY = {0: 0.300, 1: 0.302, 2: 0.304}
# Every seed gains 1.0 to 1.2 points.
GAINS = {0: 0.010, 1: 0.011, 2: 0.012}


def test_clear_gain_excludes_zero_and_is_called_a_gain() -> None:
    # Differences 1.0, 1.1, 1.2 points: mean 1.1, sd 0.1, se 0.1/sqrt(3) = 0.057735;
    # half width 4.302653 * 0.057735 = 0.24841 -> CI [0.852, 1.348] points.
    # t = 1.1 / 0.057735 = 19.0526; p = 1 - 19.0526 / sqrt(363 + 2) = 0.002743.
    ae = {s: v + GAINS[s] for s, v in STEADY.items()}
    summary = summarize([arm("baseline", STEADY), arm("AE (stride 16)", ae)], "baseline")
    d = summary.per_metric["AP"].differences["AE (stride 16)"]
    assert d.mean == pytest.approx(0.011)
    assert d.ci == pytest.approx((0.0085159, 0.0134841), abs=1e-7)
    assert d.p_value == pytest.approx(0.0027435, abs=1e-6)
    assert d.ci is not None and d.ci[0] > 0
    assert summary.verdicts["AE (stride 16)"].startswith(
        "AE (stride 16) vs baseline: +1.1 AP, 95% CI [+0.9, +1.3], p=0.003 over 3 seeds: "
        "a gain larger than seed noise (±0.2 AP). At 80% power"
    )


def test_clear_loss_and_a_gain_within_seed_noise() -> None:
    worse = {s: v - GAINS[s] for s, v in STEADY.items()}
    summary = summarize([arm("baseline", STEADY), arm("AE", worse)], "baseline")
    assert "-1.1 AP, 95% CI [-1.3, -0.9]" in summary.verdicts["AE"]
    assert "a loss larger than seed noise (±0.2 AP)" in summary.verdicts["AE"]

    # Same 1.1-point gain over a reference whose std is 2 points: real, but within noise.
    better = {s: v + GAINS[s] for s, v in REF.items()}
    summary = summarize([arm("baseline", REF), arm("AE", better)], "baseline")
    assert (
        "a gain within seed noise (±2.0 AP) but consistent across the paired seeds."
        in summary.verdicts["AE"]
    )


def test_failed_seed_is_left_out_of_the_pairs_and_listed() -> None:
    # Seed 3 failed in AE. Its baseline value (99 points) must not reach the difference,
    # which is the hand example again: mean 2 points over seeds 0-2. It does count for the
    # baseline arm: mean (30 + 26 + 28 + 99) / 4 = 45.75 points.
    baseline = arm("baseline", {**REF, 3: 0.99})
    ae = arm("AE", {0: 0.31, 1: 0.28, 2: 0.31})
    summary = summarize([baseline, ae], "baseline")
    ap = summary.per_metric["AP"]
    assert ap.arms["baseline"].n == 4 and ap.arms["baseline"].mean == pytest.approx(0.4575)
    assert ap.arms["AE"].n == 3
    d = ap.differences["AE"]
    assert d.n == 3 and set(d.per_seed) == {0, 1, 2} and d.mean == pytest.approx(0.02)
    assert d.unpaired == {3: "AE: no result (job failed or not finished)"}
    table = format_table(summary)
    assert "seed 3 left out of AE - baseline (all metrics): AE: no result" in table


def test_minus_one_is_missing_not_a_value() -> None:
    # APl: COCOeval's -1 (no large objects) in seed 0 of both arms and seed 2 of AE.
    # baseline APl 40, 42, 44 (seeds 1-3): mean 42, std 2. AE APl 41, 46: mean 43.5,
    # std 5 / sqrt(2) = 3.5355. Pairs: seeds 1 and 3, differences 1 and 2 points:
    # mean 1.5, sd 0.70711, se 0.5; t_{0.975,1} = tan(0.475 pi) = 12.706205,
    # CI 1.5 ± 6.3531 = [-4.8531, 7.8531]; t = 3, p = 1 - (2/pi) atan(3) = 0.204833.
    base_apl = {0: -1.0, 1: 0.40, 2: 0.42, 3: 0.44}
    ae_apl = {0: -1.0, 1: 0.41, 2: -1.0, 3: 0.46}
    ap = {0: 0.30, 1: 0.30, 2: 0.30, 3: 0.30}
    summary = summarize([arm("baseline", ap, APl=base_apl), arm("AE", ap, APl=ae_apl)], "baseline")
    apl = summary.per_metric["APl"]
    assert apl.arms["baseline"].n == 3 and apl.arms["baseline"].mean == pytest.approx(0.42)
    assert apl.arms["baseline"].std == pytest.approx(0.02)
    assert apl.arms["baseline"].missing == {0: "-1 (COCOeval: no objects of that size)"}
    assert apl.arms["AE"].mean == pytest.approx(0.435)
    assert apl.arms["AE"].std == pytest.approx(0.0353553, abs=1e-7)
    d = apl.differences["AE"]
    assert d.n == 2 and d.mean == pytest.approx(0.015)
    assert d.ci == pytest.approx((-0.048531, 0.078531), abs=1e-6)
    assert d.p_value == pytest.approx(0.204833, abs=1e-6)
    assert d.p_value == pytest.approx(stats.ttest_rel([0.41, 0.46], [0.40, 0.44]).pvalue)
    assert set(d.unpaired) == {0, 2}
    assert d.unpaired[2] == "AE: -1 (COCOeval: no objects of that size)"
    assert d.unpaired[0].startswith("baseline: -1") and "; AE: -1" in d.unpaired[0]
    # The other metrics keep all four seeds.
    assert summary.per_metric["AP"].differences["AE"].n == 4


def test_a_metric_no_run_has_is_one_note_not_one_per_seed() -> None:
    none = {0: -1.0, 1: -1.0, 2: -1.0}
    summary = summarize(
        [arm("baseline", REF, APl=none), arm("AE", {0: 0.31, 1: 0.27, 2: 0.29}, APl=none)],
        "baseline",
    )
    lines = format_table(summary).splitlines()
    assert "APl: no value in any run (-1 (COCOeval: no objects of that size))" in lines
    assert not [line for line in lines if "left out" in line]


def test_single_seed_cannot_tell() -> None:
    summary = summarize([arm("baseline", {0: 0.30}), arm("AE", {0: 0.31})], "baseline")
    d = summary.per_metric["AP"].differences["AE"]
    assert d.n == 1 and d.mean == pytest.approx(0.01)
    assert d.std is None and d.ci is None and d.p_value is None
    assert summary.per_metric["AP"].arms["AE"].std is None
    verdict = summary.verdicts["AE"]
    assert verdict.startswith(
        "AE vs baseline: cannot tell with 1 paired seed: run at least 2 (better 5) seeds per arm"
    )
    assert "gain" not in verdict and "loss" not in verdict
    assert verdict.endswith(
        "Power and the detectable effect cannot be computed with fewer than 2 pairs."
    )
    assert d.detectable is None and d.bootstrap_ci is None and d.wilcoxon_p is None


def test_to_dict_is_strict_json() -> None:
    summary = summarize(
        [
            arm("baseline", {**REF, 3: 0.29}, APl={0: -1.0, 1: 0.4, 2: 0.5, 3: 0.45}),
            arm("AE", {0: 0.31, 1: 0.28, 2: 0.31}, APs={0: float("nan"), 1: 0.1, 2: 0.2}),
            arm("lonely", {0: 0.3}),
            arm("empty", {}),
        ],
        "baseline",
    )
    data = json.loads(json.dumps(summary.to_dict(), allow_nan=False))
    assert data["reference"] == "baseline" and data["headline"] == "AP"
    assert list(data["metrics"]) == list(METRICS)
    ae = data["metrics"]["AP"]["differences"]["AE"]
    assert ae["n"] == 3 and ae["ci"] == pytest.approx([-0.00484138, 0.04484138], abs=1e-7)
    assert ae["unpaired"] == {"3": "AE: no result (job failed or not finished)"}
    assert data["metrics"]["APs"]["arms"]["AE"]["missing"] == {"0": "not a finite number (nan)"}
    assert data["metrics"]["AP"]["differences"]["empty"]["mean"] is None
    assert data["metrics"]["AP"]["differences"]["lonely"]["ci"] is None
    assert set(data["verdicts"]) == {"AE", "lonely", "empty"}
    assert data["target_effect"] is None and data["power"] == 0.8
    assert ae["bootstrap_ci"] == pytest.approx([0.01, 0.03]) and ae["wilcoxon_p"] == 0.25
    assert ae["p_improvement"] == 1.0 and ae["pairs_needed"] is None
    assert data["metrics"]["AP"]["differences"]["lonely"]["detectable"] is None


def _full_summary() -> ComparisonSummary:
    ae = {s: v + GAINS[s] for s, v in STEADY.items()}
    return summarize(
        [arm("baseline", STEADY), arm("AE (stride 16)", ae), arm("copy", STEADY)], "baseline"
    )


def test_format_table_lists_every_arm_metric_and_verdict() -> None:
    summary = _full_summary()
    table = format_table(summary)
    for name in ("baseline", "AE (stride 16)", "copy", *METRICS):
        assert name in table
    assert "AE (stride 16) - baseline" in table and "copy - baseline" in table
    # AP row: baseline 30.20 ± 0.20 points; AE +1.10 [+0.85, +1.35].
    ap_row = next(line for line in table.splitlines() if line.startswith("AP "))
    assert "30.20 ± 0.20 (n=3)" in ap_row and "+1.10 [+0.85, +1.35] p=0.003 (n=3)" in ap_row
    words = " ".join(table.split())
    for verdict in summary.verdicts.values():
        assert verdict in words
    assert "AE (stride 16) [+1.00, +1.20] 1.00 [0.44, 1.00] p=0.25 p=0.005" in words


def test_format_table_prose_fits_100_columns_and_states_the_target() -> None:
    ae = {s: v + GAINS[s] for s, v in REF.items()}
    summary = summarize([arm("baseline", REF), arm("AE", ae)], "baseline", target_effect=0.01)
    d = summary.per_metric["AP"].differences["AE"]
    assert d.pairs_needed is not None and d.detectable is not None
    table = format_table(summary)
    assert max(len(line) for line in table.splitlines()) <= 100
    assert "pairs would detect 1.0 AP" in summary.verdicts["AE"]
    assert f"about {d.pairs_needed} pairs would detect 1.0 AP" in " ".join(table.split())


def _assert_png(data: bytes) -> None:
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_plot_writes_png_for_full_data_and_curves(tmp_path: Path) -> None:
    curves: dict[str, list[dict[str, list[float]]]] = {
        "baseline": [
            {"iteration": [0, 1, 2, 3], "loss": [4.0, 3.0, 2.5, 2.0],
             "val_iteration": [2, 3], "val_AP": [0.2, 0.3]},
            {"iteration": [0, 1, 2, 3], "loss": [4.2, 3.1, 2.4, 2.1],
             "val_iteration": [2, 3], "val_AP": [0.21, 0.29]},
        ],
        # A seed that stopped early and one with no validation; "copy" has no curves.
        "AE (stride 16)": [
            {"iteration": [0, 1], "loss": [4.0, 3.5]},
            {"iteration": [0, 1, 2, 3], "loss": [3.9, 2.9, 2.2, 1.9]},
        ],
    }  # fmt: skip
    path = tmp_path / "comparison.png"
    plot_comparison(_full_summary(), curves, path)
    _assert_png(path.read_bytes())


def test_plot_writes_png_for_one_seed_and_no_results() -> None:
    one = summarize([arm("baseline", {0: 0.30}), arm("AE", {0: 0.31, 1: 0.33})], "baseline")
    buffer = io.BytesIO()
    plot_comparison(one, None, buffer)
    _assert_png(buffer.getvalue())

    nothing = summarize([ArmResult("baseline", {}), ArmResult("AE", {})], "baseline")
    assert nothing.verdicts["AE"].startswith("AE vs baseline: cannot tell with 0 paired seeds")
    buffer = io.BytesIO()
    plot_comparison(nothing, {"AE": []}, buffer)
    _assert_png(buffer.getvalue())


def test_bad_input_is_rejected_with_a_reason() -> None:
    a, b = arm("a", REF), arm("b", REF)
    with pytest.raises(ValueError, match="reference arm 'c' is not one of the arms"):
        summarize([a, b], "c")
    with pytest.raises(ValueError, match="at least two arms"):
        summarize([a], "a")
    with pytest.raises(ValueError, match="unique"):
        summarize([a, arm("a", REF)], "a")
    with pytest.raises(ValueError, match="confidence"):
        summarize([a, b], "a", confidence=95)
    with pytest.raises(ValueError, match=r"0\.01 = 1 AP point"):
        summarize([a, b], "a", target_effect=1.5)
    with pytest.raises(ValueError, match="4 iteration values but 3 loss values"):
        plot_comparison(
            summarize([a, b], "a"), {"a": [{"iteration": [0, 1, 2, 3], "loss": [1, 2, 3]}]},
            io.BytesIO(),
        )  # fmt: skip


def test_confidence_level_sets_the_interval() -> None:
    # 90%: t_{0.95,2} = 0.9 / sqrt(2 * 0.95 * 0.05) = 2.919986; half width 2.919986 / sqrt(3)
    # = 1.68586 points around the mean 2 -> [0.314, 3.686]: 0 is now outside.
    summary = summarize(
        [arm("baseline", REF), arm("AE", {0: 0.31, 1: 0.28, 2: 0.31})], "baseline", ("AP",), 0.9
    )
    assert summary.per_metric["AP"].differences["AE"].ci == pytest.approx(
        (0.0031414, 0.0368586), abs=1e-7
    )
    assert "90% CI [+0.3, +3.7]" in summary.verdicts["AE"] and ": a gain" in summary.verdicts["AE"]


def test_import_needs_no_torch_scipy_or_matplotlib() -> None:
    code = (
        "import sys, ae_model.compare; "
        "print(sorted(m for m in ('torch', 'scipy', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plot_title_names_setting_and_arms_and_the_loss_curve_is_smoothed() -> None:
    summary = _full_summary()
    title = _title(summary, "yolov3-tiny-small on quickstart digits")
    assert title.startswith("yolov3-tiny-small on quickstart digits: ")
    assert all(arm in title for arm in summary.arms), title
    noise = np.random.default_rng(0).normal(0, 1, 1000)
    smooth = _rolling_mean(2.0 + noise)
    assert smooth.shape == noise.shape  # no lag, no lost ends
    assert np.std(smooth - 2.0) < np.std(noise) / 3
    np.testing.assert_allclose(_rolling_mean(np.full(50, 3.0)), 3.0)


def test_format_table_prints_every_seeds_values_and_paired_differences() -> None:
    summary = summarize(
        [arm("baseline", {0: 0.30, 1: 0.25}, AP50={0: 0.61, 1: 0.55}),
         arm("AE", {0: 0.32, 1: 0.24}, AP50={0: 0.60, 1: 0.58})],
        "baseline",
    )  # fmt: skip
    lines = format_table(summary).splitlines()
    start = lines.index("per seed, AP / AP50 (x100):")
    assert lines[start + 1].split() == ["seed", "baseline", "AE", "AE", "-", "baseline"]
    assert lines[start + 2].split() == ["0", "30.0", "/", "61.0", "32.0", "/", "60.0",
                                        "+2.0", "/", "-1.0"]  # fmt: skip
    assert lines[start + 3].split() == ["1", "25.0", "/", "55.0", "24.0", "/", "58.0",
                                        "-1.0", "/", "+3.0"]  # fmt: skip


def test_the_interval_sequence_panel_draws_each_pairs_intervals() -> None:
    from matplotlib.figure import Figure

    rng = np.random.default_rng(3)
    base = {seed: 0.3 + rng.normal(0, 0.01) for seed in range(8)}
    gain = {seed: v + 0.02 + rng.normal(0, 0.01) for seed, v in base.items()}
    summary = summarize([arm("baseline", base), arm("AE", gain)], "baseline")
    ax = Figure().add_subplot()
    _plot_interval_sequence(ax, summary)

    points = 100 * np.array([gain[s] - base[s] for s in range(8)])
    # [0]: the zero line; then the mean and the t-interval's two sides.
    mean, lower, upper = (np.asarray(line.get_ydata()) for line in ax.get_lines()[1:4])
    assert np.allclose(mean, [points[:k].mean() for k in range(2, 9)])
    half = stats.t.ppf(0.975, 7) * points.std(ddof=1) / np.sqrt(8)
    assert (lower[-1], upper[-1]) == pytest.approx((points.mean() - half, points.mean() + half))
    # The shaded band after all 8 pairs is the confidence sequence the stopping rule uses,
    # wider than the fixed-n interval (it holds at every n at once).
    band = np.asarray(ax.collections[-1].get_paths()[0].vertices)
    at_8 = band[band[:, 0] == 8, 1]
    low, high = confidence_sequence(list(points), 0.95)
    assert (at_8.min(), at_8.max()) == pytest.approx((low, high))
    assert low < points.mean() - half and "pairs accrue" in ax.get_title()
    # The y range fits the later half of the pairs (and 0), not the 2-pair t-interval that is
    # many times wider.
    bottom, top = ax.get_ylim()
    assert bottom <= min(0.0, low) and top >= max(0.0, high)
    assert lower[0] < bottom or upper[0] > top
    assert top - bottom < (upper[0] - lower[0]) / 2
