"""Training throughput and accuracy after a wall-time budget: yolov3-tiny on generated digits.

Generates a ``digits`` dataset at the benchmark size (or reuses ``--data``), trains the full
yolov3-tiny cfg (its 80-class heads retargeted to the 10 digits by the Trainer) until
``--budget-s`` seconds of training wall time are spent (a hook requests the stop after the step
that crosses the budget), then evaluates once on the val split. Prints images/s (median of the
per-step figure after a warm-up, and overall over the budget), iterations done, the share of
step time spent waiting for the data loader, on CUDA how busy NVML saw the GPU, then the COCO
AP50 and AP, and the evaluation latency per image. The cfg gets ``flip=0`` unless ``--flip``:
mirrored digits are other glyphs or none.

    python bench/bench_train.py --budget-s 180
    python bench/bench_train.py --budget-s 180 --ae-stride 16

With AE the schedule must end inside the budget, but the number of iterations the budget allows
is not known in advance: unless ``--ae-iterations`` fixes it, AE's length T is set after the
warm-up to the iterations the remaining budget allows at the median step time so far.
"""

import argparse
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import torch

from ae_model.cfg import resolve_cfg
from ae_model.data.synthetic import generate_dataset
from ae_model.options import AEConfig, TrainConfig
from ae_model.train import Hook, NonFiniteLossError, Trainer

# Effectively no iteration limit: the wall-time budget ends training. Large enough that the
# cfg's steps policy and darknet's multi-scale tail (last 100 iterations) never kick in.
NO_ITERATION_LIMIT = 1_000_000


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", default="yolov3-tiny", help="bundled cfg name or .cfg path")
    parser.add_argument("--size", type=int, default=160, help="input and image side (px)")
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset folder: reused if it holds a COCO layout, else generated "
                             "there (default: a temporary folder)")  # fmt: skip
    parser.add_argument("--train-images", type=int, default=800, help="generated train images")
    parser.add_argument("--val-images", type=int, default=200, help="generated val images")
    parser.add_argument("--budget-s", type=float, default=180.0, help="training wall time (s)")
    parser.add_argument("--max-iterations", type=int, default=None,
                        help="stop after this many iterations if the budget lasts that long, "
                             "to compare settings at equal iterations")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=10,
                        help="first steps left out of the median images/s")  # fmt: skip
    parser.add_argument("--batch", type=int, default=16, help="images per iteration")
    parser.add_argument("--subdivisions", type=int, default=1, help="micro-batches per iteration")
    parser.add_argument("--lr", type=float, default=0.001, help="learning rate after burn-in")
    parser.add_argument("--burn-in", type=int, default=50, help="darknet burn-in iterations")
    parser.add_argument("--multiscale", action="store_true",
                        help="follow the cfg's random= (default: fixed --size)")  # fmt: skip
    parser.add_argument("--flip", action="store_true",
                        help="keep the cfg's flip (default: flip=0 for digits)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--ae-stride", type=int, default=None,
                        help="Assisted Excitation on the layer chosen for stride S")  # fmt: skip
    parser.add_argument("--ae-iterations", type=int, default=None,
                        help="AE length T (default: fit to the budget)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="mixed precision where the device is fast at it "
                             "(TrainConfig.amp)")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="train through torch.compile (TrainConfig.compile)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint folder (default: a temporary folder)")  # fmt: skip
    return parser


class WallTimeBudget(Hook):
    """Requests the stop once ``budget_s`` of training wall time is spent; times every step.

    With ``fit_ae``, after ``warmup`` steps sets every AE module's T to the iterations the
    budget allows at the median step time so far, so alpha reaches 0 near the end.
    """

    def __init__(
        self, budget_s: float, warmup: int, fit_ae: bool, max_iterations: int | None = None
    ) -> None:
        self.budget_s = budget_s
        self.max_iterations = max_iterations
        self.warmup = warmup
        self.fit_ae = fit_ae
        self.start = 0.0
        self.elapsed = 0.0
        self.step_ends: list[float] = []
        self.ae_T: int | None = None

    def before_train(self, trainer: Trainer) -> None:
        self.start = time.perf_counter()

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        self.step_ends.append(now)
        self.elapsed = now - self.start
        if self.fit_ae and len(self.step_ends) == self.warmup:
            gaps = [b - a for a, b in pairwise([self.start, *self.step_ends])]
            step_s = statistics.median(gaps[1:] or gaps)  # the first step starts the loader
            remaining = max(0, round((self.budget_s - self.elapsed) / step_s))
            self.ae_T = max(1, trainer.iteration + remaining)
            for module in trainer.ae_modules().values():
                module.T = self.ae_T
        if self.elapsed >= self.budget_s or trainer.iteration == self.max_iterations:
            trainer.stop_requested = True


class GpuBusy(Hook):
    """Samples NVML's GPU utilisation (the share of time a kernel was running) from a thread,
    from the step after the warm-up to the end of training."""

    def __init__(self, warmup: int, every_s: float = 0.25) -> None:
        self.warmup = warmup
        self.every_s = every_s
        self.samples: list[float] = []
        self.error: str | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if trainer.device.type != "cuda" or self.thread is not None:
            return
        if len(trainer.history) >= self.warmup:
            self.thread = threading.Thread(target=self.sample, args=(trainer.device,), daemon=True)
            self.thread.start()

    def sample(self, device: torch.device) -> None:
        while not self.stop.wait(self.every_s):
            try:
                self.samples.append(float(torch.cuda.utilization(device)))
            except Exception as error:  # no NVML bindings (nvidia-ml-py) or no NVML driver
                self.error = f"{type(error).__name__}: {error}"
                return

    def after_train(self, trainer: Trainer) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()

    def figure(self) -> str:
        if self.samples:
            return f"{statistics.mean(self.samples):.1f} ({len(self.samples)} samples)"
        return f"n/a ({self.error or 'not a CUDA run, or no step after the warm-up'})"


class Progress(Hook):
    """A line on stderr every ``every_s`` seconds, so a long run shows it is alive."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self.start = 0.0
        self.next = 0.0

    def before_train(self, trainer: Trainer) -> None:
        self.start = time.perf_counter()
        self.next = self.start + self.every_s

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        if now >= self.next:
            self.next += self.every_s
            print(
                f"  {now - self.start:6.0f} s  iteration {trainer.iteration}  "
                f"loss {metrics['loss']:.3f}  lr {metrics['lr']:.2g}  "
                f"alpha {metrics['ae_alpha']:.2f}  {metrics['images_per_s']:.1f} img/s",
                file=sys.stderr,
                flush=True,
            )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(trainer: Trainer) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = str(trainer.device)
    if trainer.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(trainer.device)})"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"machine: {cpu_model()}, {cores} cores usable, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}, Python {platform.python_version()}, "
        f"load average {load}"
    )


def ensure_dataset(args: argparse.Namespace, root: Path) -> str:
    """Generate the digits dataset into ``root`` unless a COCO layout is already there."""
    if (root / "annotations" / "instances_train.json").is_file():
        return f"dataset: {root} (reused)"
    start = time.perf_counter()
    info = generate_dataset(
        "digits", root, train=args.train_images, val=args.val_images, size=args.size,
        seed=args.seed,
    )  # fmt: skip
    counts = ", ".join(
        f"{name} {s.num_images} images / {s.num_objects} objects" for name, s in info.splits.items()
    )
    seconds = time.perf_counter() - start
    return f"dataset: digits at {args.size} px, {counts}, generated in {seconds:.1f} s"


def cfg_text(name: str, flip: bool) -> str:
    """The cfg's text, with ``flip=0`` in [net] unless ``flip``: mirrored digits are other
    glyphs or none, so flipping (darknet's default) would teach wrong labels."""
    text = resolve_cfg(name).text
    if flip:
        return text
    text, replaced = re.subn(r"(?m)^\s*flip\s*=.*$", "flip=0", text)
    if not replaced:
        text = re.sub(r"(?m)^\[net(work)?\]\s*$", r"\g<0>\nflip=0", text, count=1)
    return text


def median_loss(steps: list[dict[str, float]]) -> float:
    return statistics.median(m["loss"] for m in steps)


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [f"{'figure':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace, data: Path, out: Path) -> int:
    print(ensure_dataset(args, data))
    ae = None
    if args.ae_stride:
        ae = AEConfig({"stride": args.ae_stride}, iterations=args.ae_iterations)
    config = TrainConfig(
        cfg=args.cfg, cfg_text=cfg_text(args.cfg, args.flip), data=str(data), out=str(out),
        seed=args.seed,
        max_batches=NO_ITERATION_LIMIT, batch=args.batch, subdivisions=args.subdivisions,
        learning_rate=args.lr, burn_in=args.burn_in, width=args.size, height=args.size,
        multiscale=args.multiscale, ae=ae, device=args.device, amp=args.amp,
        workers=args.workers, checkpoint_interval=0, compile=args.compile,
    )  # fmt: skip
    start = time.perf_counter()
    budget = WallTimeBudget(
        args.budget_s, args.warmup, fit_ae=ae is not None and not ae.iterations,
        max_iterations=args.max_iterations,
    )  # fmt: skip
    gpu = GpuBusy(args.warmup)
    trainer = Trainer(config, hooks=[budget, gpu, Progress()])
    setup_s = time.perf_counter() - start
    r = config.resolved
    print(machine_line(trainer))
    retargeted = r["retargeted_from_classes"]
    print(
        f"network: {args.cfg} at {args.size}x{args.size}"
        f"{' (multi-scale, random=' + str(r['random']) + ')' if r['random'] else ''}, "
        f"classes {retargeted} -> {len(r['classes'])}, batch {r['batch']} / subdivisions "
        f"{r['subdivisions']}, lr {r['learning_rate']:g} (burn-in {r['burn_in']}, policy "
        f"{r['policy']}), workers {args.workers}, precision {r['amp_dtype'] or 'float32'}"
        f"{', torch.compile' if args.compile else ''}, AE "
        + (f"on layer(s) {trainer.ae_layers} (stride {args.ae_stride})" if ae else "off")
    )
    aug = r["augment"]
    print(
        f"augmentation: jitter {aug['jitter']:g}, hue {aug['hue']:g}, saturation "
        f"{aug['saturation']:g}, exposure {aug['exposure']:g}, flip {aug['flip']}, letterbox "
        f"{aug['letterbox']}"
    )
    at_most = f" or {args.max_iterations} iterations" if args.max_iterations else ""
    print(f"budget: {args.budget_s:g} s of training{at_most}, then one evaluation; setup "
          f"{setup_s:.1f} s")  # fmt: skip

    error: NonFiniteLossError | None = None
    try:
        trainer.train()
    except NonFiniteLossError as exc:
        error = exc
    history = trainer.history
    if not history:
        print(f"diverged at the first step: {error}" if error else "no step fit in the budget")
        return 1
    steps_after_warmup = history[args.warmup :] or history
    images_done = r["batch"] * len(history)
    # A step's own timer (data loading included) gives images_per_s; its time follows from it.
    step_ms = [1000 * r["batch"] / m["images_per_s"] for m in history]
    timed = step_ms[args.warmup :] or step_ms
    waited = [m["data_wait"] * ms for m, ms in zip(steps_after_warmup, timed, strict=True)]
    rows = [
        ("iterations in budget", f"{trainer.iteration}"),
        ("training wall time (s)", f"{budget.elapsed:.1f}"),
        ("images seen", f"{images_done} ({images_done / len(trainer.train_set):.1f} epochs)"),
        (
            f"images/s, median of steps {args.warmup + 1}..{len(history)}",
            f"{statistics.median(m['images_per_s'] for m in steps_after_warmup):.1f}",
        ),
        ("images/s, overall (images / wall time)", f"{images_done / budget.elapsed:.1f}"),
        (
            "step time (ms): median / mean / max",
            f"{statistics.median(step_ms):.0f} / {statistics.mean(step_ms):.0f} / "
            f"{max(step_ms):.0f}",
        ),
        ("first step (ms; starts the loader, compiles)", f"{step_ms[0]:.0f}"),
        ("wall time outside steps (s)", f"{budget.elapsed - sum(step_ms) / 1000:.1f}"),
        (
            f"waiting for data (% of step time, steps {args.warmup + 1}..{len(history)})",
            f"{100 * sum(waited) / sum(timed):.1f}",
        ),
        ("GPU busy (% of time, NVML, after the warm-up)", gpu.figure()),
        ("loss, median of the first 10 steps", f"{median_loss(history[:10]):.3f}"),
        ("loss, median of the last 10 steps", f"{median_loss(history[-10:]):.3f}"),
    ]
    if ae is not None:
        fitted = " (fitted after warm-up)" if budget.ae_T is not None else ""
        rows.append(("AE T (iterations)", f"{budget.ae_T or ae.iterations}{fitted}"))
        rows.append(("AE alpha at the last step", f"{history[-1]['ae_alpha']:.3f}"))
    if error is not None:
        print(format_table(rows))
        print(f"diverged: {error}")
        return 1
    start = time.perf_counter()
    metrics = trainer.evaluate()
    eval_s = time.perf_counter() - start
    rows += [
        (f"val AP50 ({len(trainer.val_set)} images)", f"{metrics['AP50']:.4f}"),
        ("val AP (0.50:0.95)", f"{metrics['AP']:.4f}"),
        ("eval latency per image (ms, forward + NMS)", f"{metrics['latency_ms']:.2f}"),
        ("evaluation wall time (s, with loading and COCOeval)", f"{eval_s:.1f}"),
    ]
    print(format_table(rows))
    return 0


def main(args: argparse.Namespace) -> int:
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("date:", datetime.now(UTC).isoformat(timespec="seconds"))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        data = args.data or Path(tmp) / "data"
        out = args.out or Path(tmp) / "run"
        return run(args, data, out)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
