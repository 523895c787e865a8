"""`aetrain train` says what it did to a cfg's schedule, and warns of one that cannot train."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ae_model.cli import app
from ae_model.data.synthetic import generate_dataset

runner = CliRunner()
# yolov3-tiny-small: batch 16, max_batches 4000, burn_in 100, steps 3200,3600.
COMMON = ["train", "--cfg", "yolov3-tiny-small", "--size", "64", "--batch", "4",
          "--subdivisions", "1", "--workers", "0", "--no-amp", "--val-limit", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset("shapes", root, train=8, val=2, size=64, seed=1, min_scale=0.1)
    return root


def test_epochs_shorter_than_the_cfg_print_the_scaled_schedule(
    shapes: Path, tmp_path: Path
) -> None:
    # 1 epoch of 8 images at batch 4: 2 iterations, 2/4000 of the cfg's schedule.
    args = [*COMMON, "--data", str(shapes), "--epochs", "1", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        "note: the run's 2 iterations are shorter than the cfg's max_batches=4000" in result.output
    )
    assert "burn_in 100 -> 0, steps 3200,3600 -> 1,1" in result.output
    assert "warning:" not in result.output


def test_a_burn_in_the_run_never_leaves_is_warned_about(shapes: Path, tmp_path: Path) -> None:
    args = [*COMMON, "--data", str(shapes), "--max-batches", "2", "--burn-in", "5",
            "--out", str(tmp_path)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "warning: burn_in=5 is at or beyond the run's last iteration (2)" in result.output


def test_options_out_of_bounds_are_refused_in_the_definitions_words(shapes: Path) -> None:
    result = runner.invoke(app, [*COMMON, "--data", str(shapes), "--momentum", "1.5"])
    assert result.exit_code == 2
    assert "momentum=1.5 must be < 1" in result.output
