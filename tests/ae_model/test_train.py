"""Real (tiny) training runs on generated data: learning, determinism, exact resume, AE."""

import csv
import math
import re
from pathlib import Path

import pytest
import torch

from ae_model.cfg import resolve_cfg
from ae_model.data.synthetic import generate_dataset
from ae_model.device import cpu_has_native_bf16
from ae_model.hooks import ResultsLogger
from ae_model.options import AEConfig, AESchedule, TrainConfig
from ae_model.train import Hook, NonFiniteLossError, Trainer

CFG = "yolov3-tiny-small"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset("shapes", root, train=48, val=8, size=128, seed=3)
    return root


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    # amp=False: float32 on every CPU. Where the CPU has native bf16, mixed precision would
    # train these tiny runs in bfloat16, which diverges at this learning rate.
    base: dict[str, object] = dict(
        cfg=CFG, data=str(data), out=str(out), max_batches=12, batch=8, subdivisions=2,
        learning_rate=0.01, burn_in=5, policy="constant", width=128, height=128,
        multiscale=False, checkpoint_interval=6, seed=7, workers=0, amp=False,
    )  # fmt: skip
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


class StopAt(Hook):
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if trainer.iteration >= self.iteration:
            trainer.stop_requested = True


def test_tiny_run_learns_and_evaluates(shapes: Path, tmp_path: Path) -> None:
    trainer = Trainer(_config(shapes, tmp_path, max_batches=120, subdivisions=1))
    final = trainer.train()
    losses = [m["loss"] for m in trainer.history]
    assert len(losses) == 120
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, f"loss did not fall: {first:.2f} -> {last:.2f}"
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "latency_ms"} <= set(final)
    assert 0.0 <= final["AP50"] <= 1.0
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()
    # The cfg has 10 classes; the data has 6 shapes: the heads were retargeted.
    assert trainer.model.heads[0].classes == 6
    assert trainer.config.resolved["retargeted_from_classes"] == [10]


@pytest.mark.parametrize("amp", [True, False])
def test_amp_computes_in_bfloat16_where_the_cpu_has_it(
    shapes: Path, tmp_path: Path, amp: bool
) -> None:
    trainer = Trainer(_config(shapes, tmp_path, max_batches=1, device="cpu", amp=amp))
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    seen: list[torch.dtype] = []
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    trainer.train()
    native = amp and cpu_has_native_bf16()
    assert seen[0] == (torch.bfloat16 if native else torch.float32)  # the training step
    assert trainer.config.resolved["amp_dtype"] == ("bfloat16" if native else None)
    assert math.isfinite(trainer.history[-1]["loss"])


def test_same_seed_gives_identical_losses(shapes: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        trainer = Trainer(_config(shapes, tmp_path / name, max_batches=6))
        trainer.train()
        runs.append([m["loss"] for m in trainer.history])
    assert runs[0] == runs[1]
    other = Trainer(_config(shapes, tmp_path / "c", max_batches=6, seed=8))
    other.train()
    assert [m["loss"] for m in other.history] != runs[0]


def test_compiled_training_matches_eager_with_ae(shapes: Path, tmp_path: Path) -> None:
    # AE stays eager (torch.compiler.disable) inside the compiled network: it must still act,
    # every step, with that step's boxes and alpha.
    overrides = dict(max_batches=4, amp=False, ae=AEConfig(layers={"stride": 16}))
    runs = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        trainer = Trainer(_config(shapes, tmp_path / name, compile=compiled, **overrides))
        trainer.train()
        runs[name] = [m["loss"] for m in trainer.history]
        assert (trainer.network is not None) == compiled
    assert runs["compiled"] == pytest.approx(runs["eager"], rel=1e-4)
    without_ae = Trainer(_config(shapes, tmp_path / "no-ae", max_batches=4, amp=False))
    without_ae.train()
    assert [m["loss"] for m in without_ae.history] != pytest.approx(runs["eager"], rel=1e-4)
    # The checkpoint holds the network's own keys, not those of torch.compile's wrapper.
    saved = torch.load(tmp_path / "compiled" / "last.pt", weights_only=False)
    assert not any(k.startswith("_orig_mod") for k in saved["model"])


def test_data_wait_is_the_share_of_the_step_spent_in_the_loader(
    shapes: Path, tmp_path: Path
) -> None:
    trainer = Trainer(_config(shapes, tmp_path, max_batches=3, workers=0))
    trainer.train()
    waits = [m["data_wait"] for m in trainer.history]
    # workers=0: every batch is read and augmented in the step itself.
    assert all(0 < w < 1 for w in waits), waits


def test_resume_continues_exactly(shapes: Path, tmp_path: Path) -> None:
    # anchors=fit: the resumed run fits the same anchors again (a checkpoint whose cfg
    # differed from the run's would be refused).
    overrides = dict(multiscale=True, ae=AEConfig(layers={"stride": 16}), anchors="fit")
    straight = Trainer(_config(shapes, tmp_path / "straight", **overrides))
    assert straight.resolved.anchors_fitted is not None
    straight.train()
    expected = [m["loss"] for m in straight.history]

    first = Trainer(_config(shapes, tmp_path / "split", **overrides), hooks=[StopAt(6)])
    first.train()
    assert first.iteration == 6
    second = Trainer(
        _config(shapes, tmp_path / "split", **overrides), resume=tmp_path / "split" / "last.pt"
    )
    second.train()
    resumed = [m["loss"] for m in first.history] + [m["loss"] for m in second.history]
    assert resumed == expected


def test_multiscale_with_ae_trains_at_changing_sizes(shapes: Path, tmp_path: Path) -> None:
    # Darknet trains the largest size first and for the last 100 iterations: stop at 40 of 200.
    config = _config(
        shapes, tmp_path, max_batches=200, multiscale=True, subdivisions=1, learning_rate=0.003,
        ae=AEConfig(layers={"stride": 16}, schedule=AESchedule.LINEAR, iterations=40),
    )  # fmt: skip
    trainer = Trainer(config, hooks=[StopAt(40)])
    trainer.train()
    sizes = {m["input_size"] for m in trainer.history}
    assert len(sizes) > 1 and all(s % 32 == 0 for s in sizes)
    alphas = [m["ae_alpha"] for m in trainer.history]
    assert alphas[0] == pytest.approx(1.0) and alphas[-1] < alphas[0]
    assert all(math.isfinite(m["loss"]) for m in trainer.history)
    assert trainer.config.resolved["ae_layers"] == trainer.ae_layers != []


def _losses_fall(trainer: Trainer, factor: float) -> None:
    losses = [m["loss"] for m in trainer.history]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert all(math.isfinite(x) for x in losses)
    assert last < factor * first, f"loss did not fall: {first:.2f} -> {last:.2f}"


def test_yolov2_region_head_with_reorg_learns_with_ae(shapes: Path, tmp_path: Path) -> None:
    # yolov2-small: a [region] head fed by a passthrough through [reorg]; AE at stride 16.
    config = _config(
        shapes, tmp_path, cfg="yolov2-small", max_batches=100, subdivisions=1,
        ae=AEConfig(layers={"stride": 16}),
    )  # fmt: skip
    trainer = Trainer(config)
    final = trainer.train()
    _losses_fall(trainer, 0.6)
    assert trainer.model.sections[trainer.ae_layers[0]].type == "convolutional"
    assert trainer.model.heads[0].classes == 6  # the [region] head was retargeted too
    assert 0.0 <= final["AP50"] <= 1.0


def test_yolov4_tiny_with_mosaic_learns_with_ae(shapes: Path, tmp_path: Path) -> None:
    # yolov4-tiny-small: CSP route groups, scale_x_y, CIoU; mosaic=1 turned on in its [net].
    cfg = resolve_cfg("yolov4-tiny-small").text.replace("[net]", "[net]\nmosaic=1", 1)
    config = _config(
        shapes, tmp_path, cfg_text=cfg, max_batches=100, subdivisions=1, learning_rate=0.00261,
        ae=AEConfig(layers={"stride": 16}),
    )  # fmt: skip
    trainer = Trainer(config)
    trainer.train()
    _losses_fall(trainer, 0.5)
    assert trainer.config.resolved["augment"]["mosaic"] is True
    assert trainer.ae_layers


def _diverging_cfg() -> str:
    """The test cfg with learning_rate=1e12 in its [net]: it diverges at once (a job may not
    set a rate above 10, a cfg may)."""
    text = resolve_cfg(CFG).text
    return re.sub(r"(?m)^learning_rate\s*=.*$", "learning_rate=1e12", text)


def test_non_finite_loss_stops_with_iteration_and_last_loss(shapes: Path, tmp_path: Path) -> None:
    config = _config(
        shapes, tmp_path, cfg_text=_diverging_cfg(), learning_rate=None, burn_in=0, max_batches=50
    )
    with pytest.raises(NonFiniteLossError, match=r"non-finite at iteration \d+") as info:
        Trainer(config).train()
    assert info.value.iteration >= 1
    assert info.value.last_finite is not None


class Rollbacks(Hook):
    def __init__(self) -> None:
        self.at: list[tuple[int, int]] = []  # (iteration that failed, iteration returned to)

    def after_rollback(self, trainer: Trainer, error: NonFiniteLossError) -> None:
        self.at.append((error.iteration, trainer.iteration))


def test_non_finite_loss_rolls_back_with_a_lower_learning_rate(
    shapes: Path, tmp_path: Path
) -> None:
    # lr 1e12 diverges at once; one rollback times 1e-14 continues at lr 0.01 from iteration 0.
    config = _config(
        shapes, tmp_path, cfg_text=_diverging_cfg(), learning_rate=None, burn_in=0,
        max_batches=12, nan_rollbacks=1, nan_lr_factor=1e-14,
    )  # fmt: skip
    hook = Rollbacks()
    trainer = Trainer(config, hooks=[hook])
    trainer.train()
    assert hook.at == [(1, 0)] and trainer.rollbacks == 1
    assert [m["iteration"] for m in trainer.history] == list(range(1, 13))
    assert all(math.isfinite(m["loss"]) for m in trainer.history)
    assert trainer.history[-1]["lr"] == pytest.approx(0.01)
    # The lowered rate and the count live in the checkpoint: a resume keeps both.
    resumed = Trainer(TrainConfig.from_dict({**config.to_dict(), "resolved": {}}))
    resumed.load_checkpoint(tmp_path / "last.pt")
    assert resumed.rollbacks == 1
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


class PoisonAfterEval(Hook):
    """Sets one weight to NaN after the evaluation at ``iteration``, once."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if trainer.iteration == self.iteration and not trainer.rollbacks:
            with torch.no_grad():
                weight = next(trainer.model.parameters())
                weight[(0,) * weight.dim()] = math.nan


def test_rollback_mid_run_replaces_the_abandoned_rows(shapes: Path, tmp_path: Path) -> None:
    config = _config(
        shapes, tmp_path, max_batches=12, checkpoint_interval=6, eval_interval=1, val_limit=2,
        nan_rollbacks=1, nan_lr_factor=0.5,
    )  # fmt: skip
    results = ResultsLogger(tmp_path)
    trainer = Trainer(config, hooks=[PoisonAfterEval(8), results])
    trainer.train()
    assert trainer.rollbacks == 1
    with (tmp_path / "results.csv").open() as f:
        rows = [int(float(r["iteration"])) for r in csv.DictReader(f)]
    assert rows == list(range(1, 13))  # 7 and 8 again, once each
    assert [m["iteration"] for m in trainer.history] == list(range(1, 13))
    assert trainer.history[-1]["lr"] == pytest.approx(0.005)


def test_rollbacks_are_bounded(shapes: Path, tmp_path: Path) -> None:
    config = _config(
        shapes, tmp_path, cfg_text=_diverging_cfg(), learning_rate=None, burn_in=0,
        max_batches=12, nan_rollbacks=2, nan_lr_factor=0.5,
    )  # fmt: skip
    hook = Rollbacks()
    trainer = Trainer(config, hooks=[hook])
    with pytest.raises(NonFiniteLossError):
        trainer.train()
    assert trainer.rollbacks == 2 and [back for _, back in hook.at] == [0, 0]


def test_net_section_schedule_keys_reach_the_scheduler(shapes: Path, tmp_path: Path) -> None:
    text = resolve_cfg(CFG).text.replace("decay=0.0005", "")
    cfg = text.replace("[net]", "[net]\nstep=3\nscale=0.5\ngamma=0.9", 1)
    config = _config(shapes, tmp_path, cfg_text=cfg, policy="step", burn_in=0, decay=None)
    trainer = Trainer(config)
    assert trainer.schedule(7) == pytest.approx(0.01 * 0.5**2)  # 7 // 3 = 2 halvings
    assert (trainer.schedule.step, trainer.schedule.gamma) == (3, 0.9)
    assert trainer.config.resolved["decay"] == 0.0001  # darknet's default without `decay=`


def test_size_not_a_multiple_of_32_is_refused(shapes: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="width=100 must be a multiple of 32"):
        Trainer(_config(shapes, tmp_path, width=100))


def test_resume_refuses_a_checkpoint_of_other_settings(shapes: Path, tmp_path: Path) -> None:
    first = Trainer(_config(shapes, tmp_path, max_batches=6))
    first.train()
    changed = _config(shapes, tmp_path / "again", max_batches=6, learning_rate=0.02, seed=8)
    with pytest.raises(ValueError, match=r"other settings.*seed: 7 -> 8.*learning_rate"):
        Trainer(changed, resume=tmp_path / "last.pt")
    # Where it runs and how often it evaluates may change between attempts.
    same = _config(shapes, tmp_path / "moved", max_batches=6, checkpoint_interval=3)
    assert Trainer(same, resume=tmp_path / "last.pt").iteration == 6


def test_epochs_become_iterations(shapes: Path, tmp_path: Path) -> None:
    # 48 training images, batch 8: 2.5 epochs are 15 iterations.
    trainer = Trainer(_config(shapes, tmp_path, max_batches=None, epochs=2.5))
    assert trainer.config.resolved["max_batches"] == 15
    with pytest.raises(ValueError, match="max_batches or epochs, not both"):
        Trainer(_config(shapes, tmp_path, max_batches=10, epochs=1.0))
