"""Starting a run from pretrained weights: darknet .weights (full or .conv.N) and checkpoints,
across class counts, seeded alike, resumable, and reported layer by layer."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ae_model.cfg import bundled_cfg_path, parse_cfg, resolve_cfg
from ae_model.cli import app
from ae_model.darknet import Darknet
from ae_model.data.synthetic import generate_dataset
from ae_model.layers import ConvolutionalLayer
from ae_model.options import TrainConfig
from ae_model.train import Trainer
from ae_model.weights import WeightsError, load_start_weights, save_darknet_weights

CFG = "yolov3-tiny-small"  # 10 classes, like the digits
CUTOFF = 9  # a backbone: the first 9 layers, 5 of them convolutional

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    generate_dataset("digits", root, train=8, val=2, size=64, seed=1, min_scale=0.1)
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset("shapes", root, train=8, val=2, size=64, seed=1, min_scale=0.1)
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Darknet:
    """A network whose weights no seeded initialisation of these tests gives."""
    torch.manual_seed(1234)
    return Darknet(CFG)


@pytest.fixture(scope="module")
def full_file(tmp_path_factory: pytest.TempPathFactory, pretrained: Darknet) -> Path:
    """A full .weights file of ``pretrained``."""
    path = tmp_path_factory.mktemp("weights") / "full.weights"
    save_darknet_weights(pretrained, path)
    return path


def _config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    base: dict[str, object] = dict(
        cfg=CFG, data=str(data), out=str(out), max_batches=2, batch=4, subdivisions=1,
        width=64, height=64, multiscale=False, seed=5, workers=0, amp=False, val_limit=2,
    )  # fmt: skip
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _conv_indices(model: Darknet) -> list[int]:
    return [i for i, layer in enumerate(model.layers) if isinstance(layer, ConvolutionalLayer)]


def _same_layer(a: Darknet, b: Darknet, index: int) -> bool:
    left, right = a.layers[index].state_dict(), b.layers[index].state_dict()
    return all(torch.equal(left[key], right[key]) for key in left)


def _head_inputs(model: Darknet) -> list[int]:
    """The convolutions right before the heads: their filters depend on the classes."""
    return [i - 1 for i, layer in enumerate(model.layers) if layer in model.heads]


def test_a_conv_n_backbone_loads_its_layers_and_the_rest_keeps_the_seeded_init(
    digits: Path, tmp_path: Path, pretrained: Darknet
) -> None:
    path = tmp_path / f"backbone.conv.{CUTOFF}"
    save_darknet_weights(pretrained, path, cutoff=CUTOFF)
    started = Trainer(_config(digits, tmp_path / "a", weights=str(path)))
    seeded = Trainer(_config(digits, tmp_path / "b"))
    backbone = [i for i in _conv_indices(pretrained) if i < CUTOFF]
    assert started.start is not None and list(started.start.loaded) == backbone
    assert started.start.missing == tuple(i for i in _conv_indices(pretrained) if i >= CUTOFF)
    for index in _conv_indices(pretrained):
        assert _same_layer(started.model, pretrained, index) == (index < CUTOFF), index
        assert _same_layer(started.model, seeded.model, index) == (index >= CUTOFF), index
    assert started.config.resolved["start"]["loaded"] == backbone


def test_a_full_file_starts_a_run_on_other_classes_and_reinitialises_the_heads(
    shapes: Path, tmp_path: Path, pretrained: Darknet, full_file: Path
) -> None:
    trainer = Trainer(_config(shapes, tmp_path / "run", weights=str(full_file)))
    assert trainer.resolved.retargeted_from_classes == (10,)
    assert trainer.start is not None and not trainer.start.missing
    assert list(trainer.start.reshaped) == _head_inputs(trainer.model)
    for index in trainer.start.loaded:
        assert _same_layer(trainer.model, pretrained, index)
    assert "re-initialised" in trainer.start.describe()


def test_a_cutoff_loads_only_the_first_layers_of_a_full_file(
    digits: Path, tmp_path: Path, pretrained: Darknet, full_file: Path
) -> None:
    trainer = Trainer(
        _config(digits, tmp_path / "run", weights=str(full_file), weights_cutoff=CUTOFF)
    )
    assert trainer.start is not None
    assert list(trainer.start.loaded) == [i for i in _conv_indices(pretrained) if i < CUTOFF]
    assert trainer.start.cutoff == CUTOFF and "first 9 layers" in trainer.start.describe()


def test_a_finished_runs_checkpoint_fine_tunes_on_other_classes(
    digits: Path, shapes: Path, tmp_path: Path
) -> None:
    first = Trainer(_config(digits, tmp_path / "first"))
    first.train()
    tuned = Trainer(_config(shapes, tmp_path / "tuned", weights=str(tmp_path / "first/last.pt")))
    assert tuned.start is not None
    assert list(tuned.start.reshaped) == _head_inputs(tuned.model)
    loaded = set(tuned.start.loaded)
    assert loaded | set(tuned.start.reshaped) == set(_conv_indices(tuned.model))
    for index in loaded:
        assert _same_layer(tuned.model, first.model, index)


def test_seeded_runs_with_the_same_start_start_alike_and_resume(
    shapes: Path, tmp_path: Path, full_file: Path
) -> None:
    a = Trainer(_config(shapes, tmp_path / "a", weights=str(full_file)))
    b = Trainer(_config(shapes, tmp_path / "b", weights=str(full_file)))
    right = b.model.state_dict()
    for key, left in a.model.state_dict().items():
        assert torch.equal(left, right[key]), key
    a.train()
    resumed = Trainer(
        _config(shapes, tmp_path / "a", weights=str(full_file), max_batches=2),
        resume=tmp_path / "a/last.pt",
    )
    assert resumed.iteration == 2  # the checkpoint's weights replace the start's
    assert _same_layer(resumed.model, a.model, 0)


def test_weights_for_another_cfg_are_refused(digits: Path, tmp_path: Path) -> None:
    path = tmp_path / "other.weights"
    save_darknet_weights(Darknet("yolov3-tiny"), path)
    with pytest.raises(WeightsError, match="for another network"):
        Trainer(_config(digits, tmp_path / "run", weights=str(path)))


def test_a_cutoff_without_weights_is_refused(digits: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="give weights too"):
        _config(digits, tmp_path, weights_cutoff=CUTOFF)


def test_the_train_command_prints_which_layers_were_loaded(
    digits: Path, tmp_path: Path, pretrained: Darknet
) -> None:
    path = tmp_path / f"backbone.conv.{CUTOFF}"
    save_darknet_weights(pretrained, path, cutoff=CUTOFF)
    args = ["train", "--cfg", CFG, "--data", str(digits), "--size", "64", "--batch", "4",
            "--subdivisions", "1", "--workers", "0", "--no-amp", "--val-limit", "2",
            "--max-batches", "1", "--out", str(tmp_path / "run"),
            "--weights", str(path)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"note: started from backbone.conv.{CUTOFF}: loaded 5 layer(s) 0, 2, 4, 6, 8" in (
        result.output
    )


def test_the_file_network_is_the_cfg_before_retargeting(tmp_path: Path) -> None:
    # A .weights start is read against the cfg as given (10 classes); the trained network
    # may have other heads. Building that network must not move the run's seeded RNG.
    cfg = parse_cfg(resolve_cfg(CFG).text, CFG)
    torch.manual_seed(0)
    Darknet(cfg)
    expected = torch.rand(3)
    path = tmp_path / "w.weights"
    save_darknet_weights(Darknet(cfg), path)
    torch.manual_seed(0)
    model = Darknet(cfg)
    load_start_weights(model, path, cfg)
    assert torch.equal(torch.rand(3), expected)


def test_a_checkpoint_with_a_moving_average_fine_tunes_from_the_average(
    digits: Path, tmp_path: Path
) -> None:
    cfg_text = bundled_cfg_path(CFG).read_text().replace("[net]", "[net]\nema_alpha=0.5", 1)
    config = _config(digits, tmp_path / "a", cfg_text=cfg_text, max_batches=4)
    source = Trainer(config)
    source.train()
    assert source.ema is not None and int(source.ema.n_averaged) > 0
    averaged = Darknet(CFG)
    load_start_weights(averaged, tmp_path / "a" / "last.pt")
    evaluated = source.eval_model.state_dict()
    trained = source.model.state_dict()
    conv = f"layers.{_conv_indices(averaged)[0]}.conv.weight"
    assert not torch.equal(evaluated[conv], trained[conv])  # the average is not the weights
    assert all(torch.equal(averaged.state_dict()[k], evaluated[k]) for k in trained)
