"""The optional test split: generated and checked like val, and where a run's best checkpoint
is evaluated without touching the run (``Trainer.evaluate_checkpoint``)."""

import json
from pathlib import Path

import pytest
import torch

from ae_model.data.check import check_dataset
from ae_model.data.layout import dataset_splits
from ae_model.data.synthetic import generate_dataset
from ae_model.options import LRPolicy, TrainConfig
from ae_model.train import Hook, Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset("shapes", root, train=32, val=8, test=8, size=96, seed=3, min_scale=0.2,
                     max_scale=0.5, max_objects=2)  # fmt: skip
    return root


def test_a_generated_test_split_has_its_files_and_count(shapes: Path, tmp_path: Path) -> None:
    files = sorted(p.name for p in (shapes / "images" / "test").iterdir())
    assert files == [f"{i:06d}.png" for i in range(8)]
    coco = json.loads((shapes / "annotations" / "instances_test.json").read_text())
    assert len(coco["images"]) == 8 and coco["annotations"]
    assert dataset_splits(shapes) == ("train", "val", "test")
    report = check_dataset(shapes, dataset_splits(shapes))
    assert report.ok and report.splits["test"].images == 8
    # Without test images: no test split at all, and val is the same files either way.
    info = generate_dataset("shapes", tmp_path, train=32, val=8, size=96, seed=3, min_scale=0.2,
                            max_scale=0.5, max_objects=2)  # fmt: skip
    assert set(info.splits) == {"train", "val"} and dataset_splits(tmp_path) == ("train", "val")
    assert not (tmp_path / "images" / "test").exists()
    for name in ("images/val/000003.png", "annotations/instances_val.json"):
        assert (tmp_path / name).read_bytes() == (shapes / name).read_bytes()
    # Test images are rendered from their own streams, not copies of val's.
    assert (shapes / "images/test/000003.png").read_bytes() != (
        shapes / "images/val/000003.png"
    ).read_bytes()
    with pytest.raises(ValueError, match="test=-1"):
        generate_dataset("shapes", tmp_path / "bad", train=1, val=1, test=-1)


def test_digits_have_a_test_split_too(tmp_path: Path) -> None:
    info = generate_dataset(
        "digits", tmp_path, train=1, val=1, test=3, size=64, seed=0, min_scale=0.2
    )
    assert info.splits["test"].num_images == 3
    assert check_dataset(tmp_path, dataset_splits(tmp_path)).splits["test"].images == 3


def _config(data: Path, out: Path) -> TrainConfig:
    # Evaluated every 5 of 30 iterations: the best val AP comes before the end here.
    return TrainConfig(
        cfg="yolov3-tiny-small", data=str(data), out=str(out), max_batches=30, batch=8,
        subdivisions=1, learning_rate=0.01, burn_in=5, policy=LRPolicy.CONSTANT, width=96,
        height=96, multiscale=False, checkpoint_interval=0, seed=7, workers=0, amp=False,
        eval_interval=5,
    )  # fmt: skip


class Calls(Hook):
    """Every hook call after training, by name."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def after_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.calls.append("after_eval")

    def after_checkpoint(self, trainer: Trainer, path: Path) -> None:
        self.calls.append(f"after_checkpoint {path.name}")


def _as_val(root: Path, split: str, view: Path) -> Path:
    """A view of the dataset at ``root`` whose val split is its ``split``."""
    (view / "images").mkdir(parents=True)
    (view / "annotations").mkdir()
    for name, source in (("train", "train"), ("val", split)):
        (view / "images" / name).symlink_to(root / "images" / source)
        (view / "annotations" / f"instances_{name}.json").symlink_to(
            root / "annotations" / f"instances_{source}.json"
        )
    return view


def test_the_best_checkpoint_is_evaluated_on_test_without_touching_the_run(
    shapes: Path, tmp_path: Path
) -> None:
    calls = Calls()
    trainer = Trainer(_config(shapes, tmp_path / "run"), hooks=[calls])
    trainer.train()
    best_iteration = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["iteration"]
    assert best_iteration < 30, "the test wants a best checkpoint other than the last"
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    evaluations, rng, calls.calls = list(trainer.evaluations), torch.get_rng_state(), []

    test = trainer.evaluate_checkpoint(tmp_path / "run" / "best.pt", "test")

    assert test["iteration"] == best_iteration
    assert torch.equal(torch.get_rng_state(), rng)
    assert trainer.evaluations == evaluations and calls.calls == []
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    assert trainer.model.training  # left as training leaves it
    # The same numbers as the Trainer's own evaluation of best.pt, had test been its val.
    view = _as_val(shapes, "test", tmp_path / "view")
    resumed = Trainer(_config(view, tmp_path / "resumed"), resume=tmp_path / "run" / "best.pt")
    expected = resumed.evaluate()
    assert {k: test[k] for k in METRICS} == {k: expected[k] for k in METRICS}
    assert test["AP50"] > 0, "a model that finds nothing would make the comparison empty"
    # On val, best.pt gives the best val AP the run recorded: the weights evaluated are those.
    val = trainer.evaluate_checkpoint(tmp_path / "run" / "best.pt", "val")
    assert val["AP"] == trainer.best_metric == max(e["AP"] for e in evaluations)
