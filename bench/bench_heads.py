"""Training throughput of the YOLO families side by side: yolov2-tiny ([region]), yolov3-tiny and
yolov4-tiny ([yolo]), each with the loss its heads train with.

A step is what the Trainer does per iteration minus data loading: forward, the network's loss
(``build_loss``: RegionLoss or YoloLoss), backward, SGD step. Every network gets the same images
and boxes; steps go round-robin over the networks, so drift in machine load hits all alike, and
the images/s and their ratios to the first network come from one run.

    python bench/bench_heads.py --size 256 --batch 8 --iterations 15
"""

import argparse
import os
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from bench_train import cpu_model  # bench/ is on sys.path when a script here runs

from ae_model.cfg import parse_cfg, resolve_cfg, retarget_classes
from ae_model.darknet import Darknet
from ae_model.optim import build_optimizer
from ae_model.train import build_loss

CFGS = ("yolov3-tiny", "yolov2-tiny", "yolov4-tiny")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfgs", nargs="+", default=list(CFGS),
                        help="bundled cfg names or paths; ratios are to the first")  # fmt: skip
    parser.add_argument("--size", type=int, default=256, help="input width and height (px)")
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--classes", type=int, default=10, help="classes the heads predict")
    parser.add_argument("--boxes", type=int, default=6, help="ground-truth boxes per image")
    parser.add_argument("--iterations", type=int, default=15, help="timed steps per network")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per network first")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def random_targets(batch: int, boxes: int, classes: int, gen: torch.Generator) -> torch.Tensor:
    """``(batch*boxes, 6)`` targets: image index, class id, normalised x1, y1, x2, y2."""
    centre = torch.rand(batch * boxes, 2, generator=gen) * 0.8 + 0.1
    half = torch.rand(batch * boxes, 2, generator=gen) * 0.15 + 0.02
    image = torch.arange(batch).repeat_interleave(boxes).float()
    cls = torch.randint(classes, (batch * boxes,), generator=gen).float()
    xyxy = torch.cat([centre - half, centre + half], dim=1).clamp(0, 1)
    return torch.cat([image[:, None], cls[:, None], xyxy], dim=1)


class Arm:
    """One network with its loss and optimizer, stepped like the Trainer steps it."""

    def __init__(self, cfg: str, classes: int, device: torch.device) -> None:
        config = resolve_cfg(cfg)
        self.name = Path(config.source).stem
        retargeted = parse_cfg(retarget_classes(config.text, classes), config.source)
        self.model = Darknet(retargeted).to(device).train()
        self.loss_fn = build_loss(self.model.heads, self.name)
        self.optimizer = build_optimizer(self.model, 1e-4, 0.9, 0.0005)
        self.device = device
        self.seconds: list[float] = []

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> float:
        """One training step; its wall time in seconds."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        outputs = self.model(images)
        out = self.loss_fn(outputs, targets, (images.shape[3], images.shape[2]))
        out.loss.backward()
        self.optimizer.step()
        loss = out.loss.item()  # the Trainer's one host sync per step
        elapsed = time.perf_counter() - start
        if not torch.isfinite(torch.tensor(loss)):
            raise RuntimeError(f"{self.name}: non-finite loss {loss}")
        return elapsed


def main(args: argparse.Namespace) -> None:
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("date:", datetime.now(UTC).isoformat(timespec="seconds"))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(device)
    targets = random_targets(args.batch, args.boxes, args.classes, gen).to(device)
    arms = [Arm(cfg, args.classes, device) for cfg in args.cfgs]

    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    print(
        f"machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores usable, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
        f"load average {', '.join(f'{x:.2f}' for x in load)}"
    )
    print(
        f"input: {args.batch} x 3 x {args.size} x {args.size}, {args.boxes} boxes per image, "
        f"{args.classes} classes; {args.warmup} warm-up + {args.iterations} timed steps each, "
        "round-robin"
    )
    for _ in range(args.warmup):
        for arm in arms:
            arm.step(images, targets)
    for _ in range(args.iterations):
        for arm in arms:
            arm.seconds.append(arm.step(images, targets))

    base = statistics.median(arms[0].seconds)
    print(f"{'network':<22} {'loss':<11} {'step ms (median)':>17} {'images/s':>9} {'vs first':>9}")
    for arm in arms:
        median = statistics.median(arm.seconds)
        print(
            f"{arm.name:<22} {type(arm.loss_fn).__name__:<11} {median * 1000:>17.1f} "
            f"{args.batch / median:>9.1f} {base / median:>8.2f}x"
        )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
