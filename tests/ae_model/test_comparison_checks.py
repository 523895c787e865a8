"""A comparison checks the seed fingerprints its jobs recorded, and splits the AP difference's
uncertainty into its validation-image and seed parts (results injected, nothing trained)."""

from typing import Any

import numpy as np
import pytest

from ae_model.compare import ArmResult, ComparisonSummary, format_table, summarize


def _prints(seed: int, **changes: Any) -> dict[str, Any]:
    return {"weights": f"w{seed}", "data_stream": f"s{seed}", "data_stream_iterations": 100,
            "data_settings": "alike", "start": False, **changes}  # fmt: skip


def _table(summary: ComparisonSummary) -> str:
    """The text table with its wrapped lines joined."""
    return " ".join(format_table(summary).split())


def _result(ap: float, seed: int, **fingerprints: Any) -> dict[str, Any]:
    return {"AP": ap, "fingerprints": _prints(seed, **fingerprints)}


def test_equal_seeds_and_distinct_seeds_are_ok() -> None:
    arms = [ArmResult("base", {s: _result(0.3, s) for s in range(3)}),
            ArmResult("ae", {s: _result(0.31, s) for s in range(3)})]  # fmt: skip
    summary = summarize(arms, "base", metrics=["AP"])
    checks = summary.to_dict()["seed_control"]
    assert checks["status"] == "ok" and checks["checked"] == 6 and not checks["mismatches"]
    assert "seed control: ok (6 jobs)" in _table(summary)


def test_a_mismatch_of_one_seed_and_a_seed_that_changed_nothing_are_shown() -> None:
    base = {0: _result(0.3, 0), 1: _result(0.3, 1), 2: _result(0.3, 2, data_stream="s1")}
    ae = {0: _result(0.31, 0, weights="other"), 1: _result(0.31, 1), 2: _result(0.3, 2)}
    summary = summarize([ArmResult("base", base), ArmResult("ae", ae)], "base", metrics=["AP"])
    checks = summary.to_dict()["seed_control"]
    assert checks["status"] == "mismatch"
    assert checks["mismatches"] == [
        "seed 0: the arms started from different weights (base w0, ae other)",
        "seed 2: the arms saw different training batches (base s1, ae s2)",
        "base: seeds 1, 2 had identical training batches: the seed did not reach them",
    ]
    table = _table(summary)
    assert "seed control: MISMATCH" in table and "(base w0, ae other)" in table


def test_identical_weights_from_start_weights_are_a_note_and_old_jobs_are_listed() -> None:
    loaded = {s: _result(0.3, s, weights="pretrained", start=True) for s in range(2)}
    ae = {0: _result(0.3, 0, weights="pretrained", start=True), 1: {"AP": 0.3}}
    summary = summarize([ArmResult("base", loaded), ArmResult("ae", ae)], "base", metrics=["AP"])
    checks = summary.to_dict()["seed_control"]
    assert checks["status"] == "ok" and checks["unrecorded"] == ["ae seed 1"]
    assert checks["notes"] == [
        "seeds 0, 1 started from identical weights: the start weights (init) set every layer"
    ]


def test_an_arm_fed_other_batches_on_purpose_is_compared_within_its_group() -> None:
    base = {s: _result(0.3, s) for s in range(2)}
    big = {s: _result(0.3, s, data_stream=f"big{s}", data_settings="608px") for s in range(2)}
    again = {s: _result(0.3, s) for s in range(2)}
    again[1]["fingerprints"]["data_stream"] = "drifted"
    arms = [ArmResult("base", base), ArmResult("big", big), ArmResult("again", again)]
    checks = summarize(arms, "base", metrics=["AP"]).to_dict()["seed_control"]
    assert checks["mismatches"] == [
        "seed 1: the arms saw different training batches (base s1, again drifted)"
    ]
    assert checks["notes"] == [
        "arms fed with other batch settings (input size, batch, augmentation or length) have "
        "their batches compared within each group only: base, again | big"
    ]


def _bootstrap(values: np.ndarray, digest: str = "same") -> dict[str, Any]:
    return {"metric": "AP", "images": 150, "resamples": len(values), "seed": 0,
            "resamples_sha256": digest, "sd": float(values.std(ddof=1)),
            "values": values.tolist()}  # fmt: skip


def test_image_noise_splits_the_differences_spread() -> None:
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.01, 200)  # the images' effect, common to every model
    base, ae = {}, {}
    aps = {0: (0.30, 0.31), 1: (0.32, 0.35), 2: (0.29, 0.30), 3: (0.31, 0.33)}
    for seed, (b, a) in aps.items():
        own = rng.normal(0, 0.004, 200)  # how this pair's difference moves with the images
        base[seed] = {"AP": b, "image_bootstrap": _bootstrap(b + shared)}
        ae[seed] = {"AP": a, "image_bootstrap": _bootstrap(a + shared + own)}
    summary = summarize([ArmResult("base", base), ArmResult("ae", ae)], "base", metrics=["AP"])
    noise = summary.to_dict()["image_noise"]
    assert noise["arms"]["base"]["image_sd"] == pytest.approx(shared.std(ddof=1))
    diff = noise["differences"]["ae"]
    differences = np.array([a - b for b, a in aps.values()])
    seed_se = differences.std(ddof=1) / 2
    assert diff["seed_sd"] == pytest.approx(differences.std(ddof=1))
    assert diff["pairs"] == 4 and diff["pair_image_sd"] == pytest.approx(0.004, rel=0.15)
    assert diff["mean_image_sd"] == pytest.approx(0.002, rel=0.15)  # 0.004 / sqrt(4)
    share = diff["mean_image_sd"] ** 2 / (diff["mean_image_sd"] ** 2 + seed_se**2)
    assert diff["image_share"] == pytest.approx(share)
    assert diff["sentence"] == (
        f"of the spread of the difference, about {share * 100:.0f}% comes from the choice "
        "of validation images"
    )
    assert diff["sentence"] in _table(summary)


def test_pairs_on_other_images_are_left_out_of_the_image_noise() -> None:
    values = np.linspace(0.3, 0.32, 20)
    base = {s: {"AP": 0.3, "image_bootstrap": _bootstrap(values)} for s in range(2)}
    ae = {0: {"AP": 0.31, "image_bootstrap": _bootstrap(values + 0.01)},
          1: {"AP": 0.31, "image_bootstrap": _bootstrap(values, digest="other")}}  # fmt: skip
    summary = summarize([ArmResult("base", base), ArmResult("ae", ae)], "base", metrics=["AP"])
    diff = summary.to_dict()["image_noise"]["differences"]["ae"]
    assert diff["pairs"] == 1 and diff["image_share"] is None
    assert diff["unpaired"] == {"1": "the two jobs were evaluated on different images or resamples"}
    assert "seed 1 left out: the two jobs were evaluated" in _table(summary)
