"""Training step against peers: aetrain vs pytorchyolo (and ultralytics), same batch, same cfg.

One batch of the project's generated ``digits`` images (with the Trainer's augmentation of the
cfg), the same darknet cfg retargeted to its 10 classes, the same input size and batch for every
system. A step is forward + loss + backward + optimizer step:

- aetrain: ``Trainer.train_step`` itself (``ae_model.darknet.Darknet``, ``YoloLoss``, SGD from
  ``ae_model.optim``, the per-step host sync and schedule), fed the batch again each step;
- pytorchyolo 1.8.0 (eriklindernoren's PyTorch-YOLOv3): its ``Darknet`` built from the same cfg
  file, initialised as its ``load_model`` does, ``pytorchyolo.utils.loss.compute_loss``, and
  SGD as its ``train.py`` builds it for ``optimizer=sgd``;
- ultralytics (if importable): ``DetectionModel`` from ``yolov3-tinyu.yaml`` / ``yolov3u.yaml``
  (no weights downloaded), ``model.loss`` (v8 detection loss), SGD; not the same architecture
  (anchor-free head), so its figures are context, not a like-for-like ratio.

After a warm-up the systems take turns step by step (the order rotates every round), so load
from other processes on a shared machine hits all alike; the script prints medians and the
throughput ratio aetrain/peer. Target (issue 10): aetrain >= 1.5x pytorchyolo's images/s.

    python bench/bench_peers.py
    python bench/bench_peers.py --cfg yolov3-tiny --profile 5

pytorchyolo pins torch<1.13, so it lives in a separate benchmark environment (bench/README.md):
``pip install --no-deps pytorchyolo==1.8.0`` next to the project. ``--profile N`` profiles N
aetrain steps (torch.profiler) and prints the phases of the step and the top operators.
"""

import argparse
import importlib
import importlib.util
import itertools
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from bench_train import cpu_model
from torch import nn
from torch.profiler import ProfilerActivity, profile

from ae_model.data.loader import build_loader
from ae_model.data.synthetic import generate_dataset
from ae_model.device import compile_network
from ae_model.options import TrainConfig
from ae_model.train import Trainer

# Per cfg: (batch, timed iterations) small enough for a few minutes on 2 CPU cores.
DEFAULTS: dict[str, tuple[int, int]] = {"yolov3-tiny": (8, 15), "yolov3": (2, 5)}
FALLBACK_DEFAULTS = (4, 10)
# ultralytics' nearest models to the darknet cfgs: the "u" yamls keep the darknet backbone and
# neck but use its anchor-free v8 head.
ULTRALYTICS_YAML = {"yolov3-tiny": "yolov3-tinyu.yaml", "yolov3": "yolov3u.yaml"}
# Operator groups of the profile summary: substrings of aten operator names.
OPERATOR_GROUPS = {
    "convolution": ("convolution", "conv2d"),
    "batch norm": ("batch_norm",),
    "max pool": ("max_pool",),
    "leaky ReLU": ("leaky_relu",),
}
# Issue 10: aetrain's training throughput at least this multiple of pytorchyolo's.
TARGET_RATIO = 1.5
# The Trainer never reaches it: no schedule step or multi-scale tail kicks in.
NO_ITERATION_LIMIT = 1_000_000
PEER_ENV_RECIPE = """\
pytorchyolo is not importable from this Python ({python}). It pins torch<1.13, so it goes in a
separate benchmark environment, outside the clone:

    python3.11 -m venv ~/.cache/aetrain-bench/peers
    ~/.cache/aetrain-bench/peers/bin/pip install torch==2.14.1 torchvision==0.29.1
    ~/.cache/aetrain-bench/peers/bin/pip install -e .
    ~/.cache/aetrain-bench/peers/bin/pip install --no-deps pytorchyolo==1.8.0
    ~/.cache/aetrain-bench/peers/bin/pip install ultralytics   # optional third system

then run ~/.cache/aetrain-bench/peers/bin/python bench/bench_peers.py (see bench/README.md)."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", nargs="+", default=["yolov3-tiny", "yolov3"],
                        help="bundled cfg names or .cfg paths, one after another")  # fmt: skip
    parser.add_argument("--size", type=int, default=256, help="input width and height (px)")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"images per step (default per cfg: {DEFAULTS}, else "
                             f"{FALLBACK_DEFAULTS[0]})")  # fmt: skip
    parser.add_argument("--iterations", type=int, default=None,
                        help="timed steps per system (default per cfg, see --batch)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per system first")
    parser.add_argument("--peers", default="pytorchyolo,ultralytics",
                        help="comma-separated: pytorchyolo, ultralytics (skipped with the "
                             "reason when not importable)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=0.001, help="learning rate of every system")
    parser.add_argument("--contiguous", action="store_true",
                        help="add a system: aetrain without channels-last memory "
                             "(TrainConfig.channels_last=False), to see what it gains")  # fmt: skip
    parser.add_argument("--float32", action="store_true",
                        help="add a system: aetrain without mixed precision "
                             "(TrainConfig.amp=False), to see what it gains")  # fmt: skip
    parser.add_argument("--compiled", action="store_true",
                        help="add a system: aetrain through torch.compile "
                             "(TrainConfig.compile), to see what it gains")  # fmt: skip
    parser.add_argument("--profile", type=int, default=0,
                        help="then profile this many aetrain steps per cfg (0: none)")  # fmt: skip
    parser.add_argument("--profile-rows", type=int, default=15, help="operators listed")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


PHASES = ("forward", "loss", "backward", "optimizer", "rest")


class PhaseTimer:
    """Times the phases of a training step from hooks, without changing the step.

    forward: the model's forward (its ``__call__``); loss: the loss module's forward, or what the
    step marks as ``loss_start``/``loss_end``; backward: loss end to optimizer step (for aetrain
    also its loss sums and host sync); optimizer: ``optimizer.step()``; rest: the step's time
    minus the others (zero_grad, schedule, metrics).
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: nn.Module | None = None
    ) -> None:
        self.marks: dict[str, float] = {}
        self.phases: dict[str, list[float]] = {name: [] for name in PHASES}
        model.register_forward_pre_hook(lambda *_: self.mark("forward_start"))
        model.register_forward_hook(lambda *_: self.mark("forward_end"))
        if loss is not None:
            loss.register_forward_pre_hook(lambda *_: self.mark("loss_start"))
            loss.register_forward_hook(lambda *_: self.mark("loss_end"))
        optimizer.register_step_pre_hook(lambda *_: self.mark("optimizer_start"))
        optimizer.register_step_post_hook(lambda *_: self.mark("optimizer_end"))

    # Run as is, outside the graph, when the hooks fire around a compiled network's forward.
    @torch.compiler.disable
    def mark(self, name: str) -> None:
        self.marks[name] = time.perf_counter()

    def record(self, step_s: float) -> None:
        """Add the phases of the step just run, which took ``step_s`` seconds."""
        m = self.marks
        spans = {
            "forward": m["forward_end"] - m["forward_start"],
            "loss": m["loss_end"] - m["loss_start"],
            "backward": m["optimizer_start"] - m["loss_end"],
            "optimizer": m["optimizer_end"] - m["optimizer_start"],
        }
        spans["rest"] = step_s - sum(spans.values())
        for name, seconds in spans.items():
            self.phases[name].append(seconds)


@dataclass
class System:
    """A training setup under test: ``step()`` runs one training step and returns its loss."""

    name: str
    step: Callable[[], float]
    parameters: int
    timer: PhaseTimer
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def machine_line(device: torch.device) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return (
        f"machine: {cpu_model()}, {cores} cores usable, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {name}, Python {platform.python_version()}"
    )


def source_line() -> str:
    """The commit the aetrain code comes from, and whether ``ae_model/`` differs from it."""
    repo = Path(__file__).resolve().parents[1]

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *argv], capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    changed = git("status", "--porcelain", "--", "ae_model")
    return f"aetrain: commit {commit}" + (", ae_model/ has uncommitted changes" if changed else "")


def xyxy_to_cxcywh(xyxy: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` x1, y1, x2, y2 -> ``(N, 4)`` cx, cy, w, h (same units)."""
    return torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), dim=1)


def build_aetrain(
    cfg: str, data: Path, out: Path, args: argparse.Namespace, batch: int,
    channels_last: bool = True, amp: bool = True,
) -> tuple[Trainer, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The project's Trainer on ``data`` and one batch of its own training stream.

    Returns the trainer, images ``(B, 3, S, S)`` and targets ``(N, 6)`` (image index, class,
    normalised x1, y1, x2, y2), both on the trainer's device.
    """
    config = TrainConfig(
        cfg=cfg, data=str(data), out=str(out), seed=args.seed, max_batches=NO_ITERATION_LIMIT,
        batch=batch, subdivisions=1, learning_rate=args.lr, burn_in=0, width=args.size,
        height=args.size, multiscale=False, device=args.device, checkpoint_interval=0,
        channels_last=channels_last, amp=amp, workers=0,
    )  # fmt: skip
    trainer = Trainer(config)
    loader = build_loader(
        trainer.train_set, batch_size=batch, img_size=args.size, train=True, seed=args.seed,
        augment_params=trainer.resolved.augment,
    )  # fmt: skip
    images, targets = next(iter(loader))
    return trainer, images.to(trainer.device), targets.to(trainer.device)


def aetrain_system(
    trainer: Trainer, images: torch.Tensor, targets: torch.Tensor, name: str = "aetrain"
) -> System:
    batches = itertools.repeat((images, targets))

    def step() -> float:
        return trainer.train_step(batches)["loss"]

    timer = PhaseTimer(trainer.model, trainer.optimizer, trainer.loss_fn)
    return System(name, step, sum(p.numel() for p in trainer.model.parameters()), timer)


def import_pytorchyolo() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """pytorchyolo's ``models``, ``utils.loss`` and ``utils.utils`` modules.

    ``pytorchyolo.utils.utils`` imports imgaug only to seed it in ``provide_determinism``, which
    nothing here calls, and imgaug 0.4.0 fails to import under numpy 2; so when imgaug is not
    installed an empty module stands in for it.
    """
    if "imgaug" not in sys.modules and importlib.util.find_spec("imgaug") is None:
        sys.modules.setdefault("imgaug", types.ModuleType("imgaug"))
    return (
        importlib.import_module("pytorchyolo.models"),
        importlib.import_module("pytorchyolo.utils.loss"),
        importlib.import_module("pytorchyolo.utils.utils"),
    )


def pytorchyolo_system(
    cfg_file: Path, images: torch.Tensor, targets: torch.Tensor, trainer: Trainer, lr: float
) -> System:
    models, loss, utils = import_pytorchyolo()
    model = models.Darknet(str(cfg_file)).to(images.device)
    model.apply(utils.weights_init_normal)  # as pytorchyolo.models.load_model initialises
    model.train()
    r = trainer.config.resolved
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, weight_decay=r["decay"], momentum=r["momentum"]
    )
    # pytorchyolo's targets: image index, class, normalised cx, cy, w, h.
    peer_targets = torch.cat((targets[:, :2], xyxy_to_cxcywh(targets[:, 2:])), dim=1)

    timer = PhaseTimer(model, optimizer)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        outputs = model(images)
        timer.mark("loss_start")
        total, components = loss.compute_loss(outputs, peer_targets, model)
        timer.mark("loss_end")
        total.backward()
        optimizer.step()
        return float(components[3])  # compute_loss already copied them to the host

    return System("pytorchyolo", step, sum(p.numel() for p in model.parameters()), timer)


def ultralytics_system(
    yaml: str, classes: int, images: torch.Tensor, targets: torch.Tensor, trainer: Trainer,
    lr: float,
) -> System:  # fmt: skip
    # Offline and quiet: no update checks, no banner per model.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "0")
    tasks = importlib.import_module("ultralytics.nn.tasks")
    ucfg = importlib.import_module("ultralytics.cfg")
    model = tasks.DetectionModel(yaml, nc=classes, verbose=False).to(images.device)
    model.args = ucfg.get_cfg()  # the default hyperparameters the v8 loss reads (box, cls, dfl)
    model.train()
    r = trainer.config.resolved
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, weight_decay=r["decay"], momentum=r["momentum"]
    )
    batch = {
        "img": images,
        "batch_idx": targets[:, 0],
        "cls": targets[:, 1:2],
        "bboxes": xyxy_to_cxcywh(targets[:, 2:]),
    }

    timer = PhaseTimer(model, optimizer)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        predictions = model(images)
        timer.mark("loss_start")
        total, _items = model.loss(batch, predictions)
        total = total.sum()  # as ultralytics' trainer reduces the per-term losses
        timer.mark("loss_end")
        total.backward()
        optimizer.step()
        return float(total.detach())

    parameters = sum(p.numel() for p in model.parameters())
    return System(f"ultralytics ({yaml})", step, parameters, timer)


def run_alternating(
    systems: list[System], warmup: int, iterations: int, device: torch.device
) -> None:
    """``warmup`` then ``iterations`` rounds; in each every system runs one step, the order
    rotating by one every round. Timed steps land in ``System.times`` (seconds)."""
    for round_index in range(warmup + iterations):
        shift = round_index % len(systems)
        for system in systems[shift:] + systems[:shift]:
            synchronize(device)
            start = time.perf_counter()
            loss = system.step()
            synchronize(device)
            if round_index >= warmup:
                system.times.append(time.perf_counter() - start)
                system.timer.record(system.times[-1])
                system.losses.append(loss)


def speedup(ours: System, other: System) -> tuple[float, float]:
    """Throughput ratio ``ours / other``: of the median step times, and the median over rounds
    (back-to-back steps of one round share the same load, so that one is immune to drift)."""
    ratio = statistics.median(other.times) / statistics.median(ours.times)
    paired = statistics.median(b / a for a, b in zip(ours.times, other.times, strict=True))
    return ratio, paired


def report(systems: list[System], batch: int) -> None:
    """Per system: median and min step time, images/s, loss; throughput ratios of aetrain."""
    ours = systems[0]
    header = (
        f"{'system':<32} {'params':>11} {'median ms':>10} {'min ms':>9} {'images/s':>9} "
        f"{'loss first/last':>16} {'aetrain/it':>11} {'pairs':>6}"
    )
    print(header)
    print("-" * len(header))
    for system in systems:
        median = statistics.median(system.times)
        ratio, pairs = ("-", "-") if system is ours else (f"{v:.3f}" for v in speedup(ours, system))
        print(
            f"{system.name:<32} {system.parameters:>11,} {median * 1000:>10.1f} "
            f"{min(system.times) * 1000:>9.1f} {batch / median:>9.1f} "
            f"{system.losses[0]:>7.2f}/{system.losses[-1]:<8.2f} {ratio:>11} {pairs:>6}"
        )
    print(
        "aetrain/it: aetrain's images/s over the row's (its median step time / aetrain's); "
        "pairs: the median over rounds of the same ratio"
    )
    print(f"{'median ms per phase':<32}" + "".join(f"{name:>10}" for name in PHASES))
    for system in systems:
        phases = system.timer.phases
        print(
            f"{system.name:<32}"
            + "".join(f"{statistics.median(phases[name]) * 1000:>10.1f}" for name in PHASES)
        )
    peer = next((s for s in systems if s.name == "pytorchyolo"), None)
    if peer is None:
        return
    for system in systems:
        if system.name.startswith("aetrain"):
            of_medians, of_pairs = speedup(system, peer)
            met = of_medians >= TARGET_RATIO and of_pairs >= TARGET_RATIO
            print(
                f"target {system.name} >= {TARGET_RATIO}x pytorchyolo's images/s: "
                f"{'met' if met else 'NOT met'} ({of_medians:.2f}x of medians, {of_pairs:.2f}x "
                "of pairs)"
            )


def profile_aetrain(
    trainer: Trainer, images: torch.Tensor, targets: torch.Tensor, args: argparse.Namespace,
    batch: int,
) -> None:  # fmt: skip
    """Top operators of ``args.profile`` aetrain steps, and the Trainer's data loading time."""
    batches = itertools.repeat((images, targets))
    activities = [ProfilerActivity.CPU]
    if trainer.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(args.profile):
            trainer.train_step(batches)
    averages = prof.key_averages()
    print(f"torch.profiler, {args.profile} aetrain steps, top operators by self CPU time:")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))
    shares = dict.fromkeys([*OPERATOR_GROUPS, "everything else"], 0.0)
    for event in averages:
        group = next(
            (g for g, keys in OPERATOR_GROUPS.items() if any(k in event.key for k in keys)),
            "everything else",
        )
        shares[group] += event.self_cpu_time_total
    total_us = sum(shares.values())
    print("self CPU time by operator group (forward and backward together):")
    for group, us in shares.items():
        print(f"  {group:<16} {us / 1000 / args.profile:9.1f} ms per step  {us / total_us:6.1%}")

    # What the step does not include: the Trainer's data loading (main process, workers=0).
    loader = build_loader(
        trainer.train_set, batch_size=batch, img_size=args.size, train=True, seed=args.seed,
        augment_params=trainer.resolved.augment,
    )  # fmt: skip
    stream = iter(loader)
    load_s = []
    for _ in range(args.profile):
        start = time.perf_counter()
        next(stream)
        load_s.append(time.perf_counter() - start)
    median = statistics.median(load_s)
    print(
        f"data loading (read, augment, collate; workers 0), median of {args.profile} batches: "
        f"{median * 1000:.1f} ms per batch of {batch}, {median * 1000 / batch:.2f} ms per image"
    )


def bench_cfg(cfg: str, args: argparse.Namespace, tmp: Path) -> None:
    default_batch, default_iterations = DEFAULTS.get(Path(cfg).stem, FALLBACK_DEFAULTS)
    batch = args.batch or default_batch
    iterations = args.iterations or default_iterations
    data = tmp / f"data-{batch}"
    if not data.is_dir():
        start = time.perf_counter()
        # One val image: the Trainer opens the val split, the benchmark never evaluates.
        generate_dataset("digits", data, train=batch, val=1, size=args.size, seed=args.seed)
        print(f"dataset: digits at {args.size} px, {batch} train images, generated in "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    torch.manual_seed(args.seed)
    trainer, images, targets = build_aetrain(cfg, data, tmp / "run", args, batch)
    r = trainer.config.resolved
    systems = [aetrain_system(trainer, images, targets)]
    if args.contiguous:
        torch.manual_seed(args.seed)
        variant, _, _ = build_aetrain(cfg, data, tmp / "run", args, batch, channels_last=False)
        systems.append(aetrain_system(variant, images, targets, "aetrain, contiguous"))
    if args.float32:
        torch.manual_seed(args.seed)
        variant, _, _ = build_aetrain(cfg, data, tmp / "run", args, batch, amp=False)
        systems.append(aetrain_system(variant, images, targets, "aetrain, float32"))
    if args.compiled:
        torch.manual_seed(args.seed)
        variant, _, _ = build_aetrain(cfg, data, tmp / "run", args, batch)
        variant.network = compile_network(variant.model)  # what Trainer.train() does
        systems.append(aetrain_system(variant, images, targets, "aetrain, compiled"))
    print(f"precision: aetrain {r['amp_dtype'] or 'float32'} (TrainConfig.amp, autocast), "
          "peers float32")  # fmt: skip
    # The Trainer's cfg (retargeted to the data's classes) is what every darknet peer parses.
    cfg_file = tmp / f"{Path(cfg).stem}-{len(r['classes'])}.cfg"
    cfg_file.write_text(r["cfg_text"])
    skipped: list[str] = []
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if "pytorchyolo" in peers:
        if importlib.util.find_spec("pytorchyolo") is None:
            print(PEER_ENV_RECIPE.format(python=sys.executable), file=sys.stderr)
            skipped.append("pytorchyolo (not installed)")
        else:
            systems.append(pytorchyolo_system(cfg_file, images, targets, trainer, args.lr))
    if "ultralytics" in peers:
        yaml = ULTRALYTICS_YAML.get(Path(cfg).stem)
        if yaml is None:
            skipped.append(f"ultralytics (no counterpart of {cfg})")
        elif importlib.util.find_spec("ultralytics") is None:
            skipped.append("ultralytics (not installed)")
        else:
            systems.append(
                ultralytics_system(yaml, len(r["classes"]), images, targets, trainer, args.lr)
            )
    print(
        f"network: {cfg} at {args.size}x{args.size}, classes {r['retargeted_from_classes']} -> "
        f"{len(r['classes'])}, batch {batch}, {targets.shape[0]} boxes in the batch, SGD lr "
        f"{args.lr:g} momentum {r['momentum']:g} decay {r['decay']:g}"
    )
    print(
        f"steps: {args.warmup} warm-up + {iterations} timed per system, alternating; "
        f"load average before {load_average()}"
        + (f"; skipped: {', '.join(skipped)}" if skipped else "")
    )
    run_alternating(systems, args.warmup, iterations, trainer.device)
    print(f"load average after {load_average()}")
    report(systems, batch)
    if args.profile:
        profile_aetrain(trainer, images, targets, args, batch)


def main(args: argparse.Namespace) -> None:
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("date:", datetime.now(UTC).isoformat(timespec="seconds"))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(machine_line(torch.device(args.device)))
    print(source_line())
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        for cfg in args.cfg:
            print()
            bench_cfg(cfg, args, Path(tmp))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
