"""The seed controls what it claims to: a run's fingerprints of its initial weights and of its
stream of training batches are equal for equal seeds (AE or not, resumed or not) and differ
between seeds."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ae_model.compare.image_bootstrap import DETECTIONS_LAST, average_precision, read_matches
from ae_model.data.synthetic import generate_dataset
from ae_model.options import AEConfig, TrainConfig
from ae_model.train import Hook, Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset("shapes", root, train=12, val=2, size=128, seed=5)
    return root


class StopAt(Hook):
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        trainer.stop_requested = trainer.iteration >= self.iteration


def _config(data: Path, out: Path, seed: int, **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(
        cfg="yolov3-tiny-small", data=str(data), out=str(out), max_batches=3, batch=4,
        subdivisions=2, width=64, height=64, seed=seed, workers=0, amp=False,
        checkpoint_interval=0,
    )  # fmt: skip
    return TrainConfig(**{**settings, **overrides})


def _fingerprints(data: Path, out: Path, seed: int, **overrides: Any) -> dict[str, Any]:
    trainer = Trainer(_config(data, out, seed, **overrides))
    final = trainer.train()
    # The final evaluation's per-image matches are kept, and give its AP back.
    matches = read_matches(out / DETECTIONS_LAST)
    assert average_precision(matches, np.ones(2))[0] == pytest.approx(final["AP"], abs=1e-9)
    return trainer.fingerprints


def test_equal_seeds_give_equal_fingerprints_and_other_seeds_differ(
    shapes: Path, tmp_path: Path
) -> None:
    baseline = _fingerprints(shapes, tmp_path / "baseline", seed=7)
    ae = _fingerprints(shapes, tmp_path / "ae", seed=7, ae=AEConfig(layers={"stride": 16}))
    other_seed = _fingerprints(shapes, tmp_path / "other", seed=8)
    assert baseline["data_stream_iterations"] == 3 and baseline["start"] is False
    assert len(baseline["weights"]) == len(baseline["data_stream"]) == 64
    assert ae == baseline  # AE changes neither the initial weights nor the batches
    assert other_seed["weights"] != baseline["weights"]
    assert other_seed["data_stream"] != baseline["data_stream"]
    assert other_seed["data_settings"] == baseline["data_settings"]  # all but the seed alike


def test_a_resumed_run_ends_with_the_fingerprints_of_an_uninterrupted_one(
    shapes: Path, tmp_path: Path
) -> None:
    whole = _fingerprints(shapes, tmp_path / "whole", seed=7)
    out = tmp_path / "resumed"
    Trainer(_config(shapes, out, seed=7), hooks=[StopAt(2)]).train()
    resumed = Trainer(_config(shapes, out, seed=7), resume=out / "last.pt")
    assert resumed.iteration == 2
    resumed.train()
    assert resumed.fingerprints == whole
