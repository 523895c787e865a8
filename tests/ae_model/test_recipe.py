"""darknet's recipe vocabulary in training: the weights' moving average (ema_alpha), Adam,
sgdr and cosine rates, and the refusal of every key aetrain does not run."""

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from ae_model.cfg import CfgError, parse_cfg, resolve_cfg
from ae_model.data.synthetic import generate_dataset
from ae_model.optim import LRSchedule
from ae_model.options import TrainConfig
from ae_model.train import Hook, Trainer

CFG = "yolov3-tiny-small"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset("shapes", root, train=16, val=4, size=128, seed=3)
    return root


def _cfg_text(net: str = "", yolo: str = "", extra: str = "") -> str:
    """The bundled tiny cfg with ``net`` lines after ``[net]``, ``yolo`` lines after its
    first ``[yolo]`` and ``extra`` sections at its end."""
    text = resolve_cfg(CFG).text.replace("[net]\n", f"[net]\n{net}", 1)
    return text.replace("[yolo]\n", f"[yolo]\n{yolo}", 1) + extra


def _config(data: Path, out: Path, cfg_text: str, **overrides: object) -> TrainConfig:
    base: dict[str, object] = dict(
        cfg=CFG, cfg_text=cfg_text, data=str(data), out=str(out), max_batches=6, batch=4,
        subdivisions=1, learning_rate=0.01, burn_in=0, policy="constant", width=128,
        height=128, multiscale=False, checkpoint_interval=0, seed=7, workers=0, amp=False,
    )  # fmt: skip
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


class WeightsAfterStep(Hook):
    """The first convolution's weights after each optimizer step."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.seen.append(_first_conv(trainer.model).weight.detach().clone())


class StopAt(Hook):
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        trainer.stop_requested = trainer.iteration >= self.iteration


def test_ema_follows_darknets_rate_and_start_and_is_what_is_evaluated(
    shapes: Path, tmp_path: Path
) -> None:
    alpha = 0.6
    weights = WeightsAfterStep()
    trainer = Trainer(_config(shapes, tmp_path, _cfg_text(f"ema_alpha={alpha}\n")), [weights])
    assert trainer.resolved.ema_start == 3  # darknet's max_batches / 2
    evaluated: list[str] = []
    for name, model in (("live", trainer.model), ("ema", trainer.ema.module)):  # type: ignore[union-attr]
        _first_conv(model).register_forward_hook(lambda *_, n=name: evaluated.append(n))
    trainer.train()
    # Iterations 3..6 (after their steps): a copy at 3, then ema = a * ema + (1 - a) * w.
    expected = weights.seen[2]
    for live in weights.seen[3:]:
        expected = alpha * expected + (1 - alpha) * live
    averaged = _first_conv(trainer.eval_model).weight
    torch.testing.assert_close(averaged, expected)
    assert not torch.equal(averaged, _first_conv(trainer.model).weight)
    assert evaluated[-1] == "ema" and "live" in evaluated  # trained live, evaluated the average
    name = next(
        n for n, p in trainer.model.named_parameters() if p is _first_conv(trainer.model).weight
    )
    saved = torch.load(tmp_path / "best.pt", weights_only=False)
    torch.testing.assert_close(saved["ema"][f"module.{name}"], expected)


def test_resume_restores_the_ema_exactly(shapes: Path, tmp_path: Path) -> None:
    text = _cfg_text("ema_alpha=0.6\n")
    straight = Trainer(_config(shapes, tmp_path / "straight", text))
    straight.train()
    first = Trainer(_config(shapes, tmp_path / "split", text), [StopAt(4)])
    first.train()
    assert first.iteration == 4
    second = Trainer(_config(shapes, tmp_path / "split", text), resume=first.out / "last.pt")
    assert second.ema is not None and int(second.ema.n_averaged) == 2  # iterations 3 and 4
    second.train()
    assert straight.ema is not None
    for name, value in straight.ema.state_dict().items():
        assert torch.equal(second.ema.state_dict()[name], value), name


def test_adam_steps_with_the_cfgs_betas(shapes: Path, tmp_path: Path) -> None:
    text = _cfg_text("adam=1\nB1=0.8\nB2=0.99\neps=0.0001\n")
    trainer = Trainer(_config(shapes, tmp_path, text, max_batches=2, learning_rate=0.001))
    before = _first_conv(trainer.model).weight.detach().clone()
    trainer.train()
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    group = trainer.optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.99) and group["eps"] == 0.0001
    weight = _first_conv(trainer.model).weight
    assert int(trainer.optimizer.state[weight]["step"]) == 2
    assert not torch.equal(weight, before)
    assert trainer.config.resolved["optimizer"] == "adam"


@pytest.mark.parametrize(
    ("net", "policy"),
    [("sgdr_cycle=2\nsgdr_mult=2\nlearning_rate_min=0.001\n", "sgdr"),
     ("learning_rate_min=0.002\n", "cosine")],
)  # fmt: skip
def test_sgdr_and_cosine_rates_during_training(
    shapes: Path, tmp_path: Path, net: str, policy: str
) -> None:
    trainer = Trainer(_config(shapes, tmp_path, _cfg_text(net), policy=policy, burn_in=1))
    trainer.train()
    rates = [m["lr"] for m in trainer.history]  # the rate of iteration t, t = 0..5

    def cosine(low: float, t: int, period: int) -> float:
        return low + 0.5 * (0.01 - low) * (1 + math.cos(math.pi * t / period))

    if policy == "sgdr":
        # Cycles of 2 then 4 iterations from 0 (t=2 ends the first, at the minimum).
        expected = [0.0, cosine(0.001, 1, 2), 0.001, cosine(0.001, 1, 4), cosine(0.001, 2, 4)]
    else:
        # One decay over the 5 iterations after the burn-in.
        expected = [0.0] + [cosine(0.002, t - 1, 5) for t in range(1, 5)]
    assert rates[:5] == pytest.approx(expected)
    schedule = trainer.schedule
    assert isinstance(schedule, LRSchedule) and schedule.policy == policy


@pytest.mark.parametrize(
    ("net", "yolo", "extra", "key"),
    [
        ("mixup=1\n", "", "", "mixup"),
        ("cutmix=1\n", "", "", "cutmix"),
        ("blur=1\n", "", "", "blur"),
        ("gaussian_noise=1\n", "", "", "gaussian_noise"),
        ("track=1\n", "", "", "track"),
        ("label_smooth_eps=0.1\n", "", "", "label_smooth_eps"),
        ("", "focal_loss=1\n", "", "focal_loss"),
        ("", "objectness_smooth=1\n", "", "objectness_smooth"),
        ("", "iou_thresh_kind=giou\n", "", "iou_thresh_kind"),
        ("", "delta_normalizer=0.5\n", "", "delta_normalizer"),
        ("", "counters_per_class=10,20\n", "", "counters_per_class"),
        ("", "nms_kind=diounms\n", "", "nms_kind"),
        ("", "new_coords=1\n", "", "new_coords"),
        ("", "", "\n[sam]\nfrom=-2\n", "[sam]"),
        ("", "", "\n[maxpool]\nmaxpool_depth=1\n", "maxpool_depth"),
    ],
)
def test_what_aetrain_does_not_run_is_refused_naming_the_key(
    net: str, yolo: str, extra: str, key: str
) -> None:
    text = _cfg_text(net, yolo, extra)
    with pytest.raises(CfgError, match=re.escape(key)) as refused:
        parse_cfg(text, "test.cfg")
    line = int(str(refused.value).split(":")[1])
    assert key.strip("[]") in text.splitlines()[line - 1]  # the line named holds the key


def test_darknets_off_values_are_accepted() -> None:
    net = "mixup=0\ncutmix=0\nblur=0\ngaussian_noise=0\nlabel_smooth_eps=0\nresize_step=32\n"
    yolo = "focal_loss=0\nobjectness_smooth=0.0\nnms_kind=greedynms\nbeta_nms=0.6\n"
    cfg = parse_cfg(_cfg_text(net, yolo), "test.cfg")
    assert cfg.warnings == ()
    assert (cfg.net.adam, cfg.net.ema_alpha, cfg.net.sgdr_mult) == (False, 0.0, 2)
