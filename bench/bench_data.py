"""Data loading throughput: augmented training images per second, by loader worker count.

Generates ``digits`` at ``--size`` (or reuses ``--data``) and builds the Trainer that
``bench_train.py`` builds (yolov3-tiny's augmentation from its cfg: jitter, hue, saturation,
exposure; ``flip=0``). Then:

- one image's cost in the main process, split into decoding the file, the crop-and-resize
  (with box mapping) and the HSV jitter, medians over ``--images`` images;
- the Trainer's own loader at each ``--workers`` count: images/s over ``--batches`` micro-batches
  (at least 20 per worker) after the workers have started.

A training step consumes ``batch / step time`` images per second; when the loader delivers
fewer, the device waits (the Trainer's ``data_wait``).

    python bench/bench_data.py --size 416 --workers 0 1 2
"""

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

# bench/ is on sys.path when a script here runs.
from bench_train import cfg_text, cpu_model, ensure_dataset

from ae_model.data.augment import augment
from ae_model.data.loader import build_loader
from ae_model.options import TrainConfig
from ae_model.train import Trainer


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", default="yolov3-tiny", help="cfg whose augmentation is used")
    parser.add_argument("--size", type=int, default=416, help="image and input side (px)")
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset folder: reused if it holds a COCO layout, else generated "
                             "there (default: a temporary folder)")  # fmt: skip
    parser.add_argument("--train-images", type=int, default=256, help="generated train images")
    parser.add_argument("--val-images", type=int, default=1,
                        help="generated val images (the Trainer opens the split)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=16, help="images per micro-batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="loader worker counts to measure")  # fmt: skip
    parser.add_argument("--batches", type=int, default=20, help="timed micro-batches per count")
    parser.add_argument("--images", type=int, default=64, help="images in the phase split")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def phase_split(trainer: Trainer, size: int, count: int) -> list[tuple[str, float]]:
    """Median ms per image of decoding, crop-and-resize, and HSV jitter, in this process."""
    params = trainer.resolved.augment
    no_hsv = replace(params, hue=0.0, saturation=1.0, exposure=1.0)
    decode, warp, full = [], [], []
    for i in range(count):
        index = i % len(trainer.train_set)
        start = time.perf_counter()
        sample = trainer.train_set[index]
        decode.append(time.perf_counter() - start)
        # The same random draws for both: the difference is the HSV jitter alone.
        start = time.perf_counter()
        augment(sample, size, size, no_hsv, np.random.default_rng(i))
        warp.append(time.perf_counter() - start)
        start = time.perf_counter()
        augment(sample, size, size, params, np.random.default_rng(i))
        full.append(time.perf_counter() - start)
    ms = [1000 * statistics.median(t) for t in (decode, warp, full)]
    return [
        ("decode the image file", ms[0]),
        ("crop, resize, map boxes", ms[1]),
        ("HSV jitter (augment with it minus without)", ms[2] - ms[1]),
        ("total", ms[0] + ms[2]),
    ]


def loader_rate(trainer: Trainer, args: argparse.Namespace, workers: int) -> float:
    """Images/s of the Trainer's loader with ``workers`` processes, after they have started."""
    loader = build_loader(
        trainer.train_set, batch_size=args.batch, img_size=args.size, train=True,
        seed=args.seed, workers=workers, augment_params=trainer.resolved.augment,
        iterations=None,
    )  # fmt: skip
    batches = iter(loader)
    for _ in range(max(2, workers * 2)):  # start the workers and fill their prefetch queues
        next(batches)
    # Up to 2 batches per worker are ready when the clock starts (the prefetch queues): time
    # enough batches that they weigh 10% at most.
    count = timed_batches(args.batches, workers)
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    seconds = time.perf_counter() - start
    return args.batch * count / seconds


def timed_batches(batches: int, workers: int) -> int:
    return max(batches, 20 * workers)


def main(args: argparse.Namespace) -> int:
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("date:", datetime.now(UTC).isoformat(timespec="seconds"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"machine: {cpu_model()}, {cores} cores usable, torch {torch.__version__}, load "
          f"average {load}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        data = args.data or Path(tmp) / "data"
        print(ensure_dataset(args, data))
        config = TrainConfig(
            cfg=args.cfg, cfg_text=cfg_text(args.cfg, flip=False), data=str(data),
            out=str(Path(tmp) / "run"),
            width=args.size, height=args.size, multiscale=False, device="cpu", workers=0,
        )  # fmt: skip
        trainer = Trainer(config)
        aug = trainer.config.resolved["augment"]
        print(f"images: digits at {args.size} px, {len(trainer.train_set)} train images (PNG); "
              f"augmentation of {args.cfg}: jitter {aug['jitter']:g}, hue {aug['hue']:g}, "
              f"saturation {aug['saturation']:g}, exposure {aug['exposure']:g}, flip "
              f"{aug['flip']}")  # fmt: skip
        print(f"\none image, main process, median of {args.images} (ms):")
        for name, ms in phase_split(trainer, args.size, args.images):
            print(f"  {name:<44}{ms:8.2f}")
        print(f"\nloader: micro-batches of {args.batch}, timed after start-up")
        print(f"  {'workers':>7}  {'batches':>7}  {'images/s':>9}")
        for workers in args.workers:
            rate = loader_rate(trainer, args, workers)
            count = timed_batches(args.batches, workers)
            print(f"  {workers:>7}  {count:>7}  {rate:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
