"""Time to accuracy: aetrain against Ultralytics, from scratch, on the same generated data.

Each system trains on one generated ``digits`` dataset (``--train``/``--val`` images at ``--size``
px), from scratch, for ``--epochs`` epochs, once per seed. All run the same way: data loaded in
the training process (``workers=0``) and ``--threads`` torch threads, so the CPU seconds of the
training process are every CPU second training cost. Evaluation is left out of that time, and
is the same for every system: each epoch's weights are scored with aetrain's ``COCOEvaluator``
(pycocotools, COCO AP 0.5:0.95) on the whole val split, each system decoding its own boxes
(aetrain's postprocess; Ultralytics' ``predict`` with ``conf=0.001``, as its own val does).

The table compares AP at equal epochs (the last) and at equal CPU time (the least CPU any
system's run took: each system's AP at its last epoch within that budget); a PNG draws AP
against epochs and against CPU seconds for every run.

Ultralytics lives in its own environment (bench/README.md) whose site-packages also sees
this project's, e.g.::

    python3.11 -m venv ~/.cache/aetrain-bench/ultra
    echo "$(python -c 'import site; print(site.getsitepackages()[0])')" \\
        > ~/.cache/aetrain-bench/ultra/lib/python3.11/site-packages/aetrain.pth
    ~/.cache/aetrain-bench/ultra/bin/pip install ultralytics

    python bench/bench_tta.py --epochs 20 --seeds 0,1,2 --threads 1 --out /tmp/tta
"""

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Systems: aetrain runs a cfg; the others are Ultralytics models built from their YAMLs.
ULTRALYTICS = {"yolov8n": "yolov8n.yaml", "yolov3-tinyu": "yolov3-tinyu.yaml"}
DEFAULT_ULTRA_PYTHON = Path.home() / ".cache/aetrain-bench/ultra/bin/python"
# aetrain's recommended setup for small data (docs/training.md); --aetrain-cfg/--aetrain-train
# try others.
DEFAULT_CFG = "yolov3-tiny-3l-small-tuned"
DEFAULT_TRAIN: dict[str, Any] = {
    "batch": 8,
    "subdivisions": 1,
    "multiscale": False,
    "anchors": "fit",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", default="aetrain,yolov8n,yolov3-tinyu")
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16, help="Ultralytics' batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--aetrain-cfg", default=DEFAULT_CFG)
    parser.add_argument(
        "--aetrain-train",
        default=json.dumps(DEFAULT_TRAIN),
        help="JSON of TrainOptions for aetrain's runs",
    )
    parser.add_argument("--ultra-python", type=Path, default=DEFAULT_ULTRA_PYTHON)
    parser.add_argument("--out", type=Path, default=Path("/tmp/aetrain-tta"))
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take a run's curve from --out when an earlier run there had the same setup "
        "(system, seed, data, epochs, size, batch, threads; aetrain's cfg and options)",
    )
    # (internal) one training run, in the system's own Python: --run SYSTEM --seed N --data D
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        curve = run_aetrain(args) if args.run == "aetrain" else run_ultralytics(args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "curve.json").write_text(json.dumps(curve, indent=1))
        return
    compare(args)


# -- the parent: data, runs, table -----------------------------------------------------------
def compare(args: argparse.Namespace) -> None:
    data = prepare_data(args)
    systems = args.systems.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    unknown = [s for s in systems if s != "aetrain" and s not in ULTRALYTICS]
    if unknown:
        sys.exit(f"unknown systems {unknown}; choose from aetrain, {', '.join(ULTRALYTICS)}")
    if any(s in ULTRALYTICS for s in systems) and not args.ultra_python.exists():
        sys.exit(f"{args.ultra_python} not found: install Ultralytics as the docstring says")
    curves: dict[str, list[list[dict[str, float]]]] = {s: [] for s in systems}
    # The Ultralytics environment sees this project's packages through a .pth, but not an
    # editable install's own .pth there: put the checkout on its path as well.
    root = str(Path(__file__).resolve().parent.parent)
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    }
    started = time.perf_counter()
    for seed in seeds:
        for system in systems:
            out = args.out / "runs" / f"{system}-seed{seed}"
            python = sys.executable if system == "aetrain" else str(args.ultra_python)
            command = [
                python,
                __file__,
                "--run",
                system,
                "--data",
                str(data),
                "--out",
                str(out),
                "--seed",
                str(seed),
                "--epochs",
                str(args.epochs),
                "--size",
                str(args.size),
                "--batch",
                str(args.batch),
                "--threads",
                str(args.threads),
                "--aetrain-cfg",
                args.aetrain_cfg,
                "--aetrain-train",
                args.aetrain_train,
            ]
            print(f"[{time.perf_counter() - started:6.0f} s] {system} seed {seed} ...", flush=True)
            # A run's command (the system's setup: aetrain's cfg and options mean nothing to
            # Ultralytics) is kept beside its curve, so --reuse takes only a run made alike.
            setup = (
                [*command[2:], cfg_digest(args.aetrain_cfg)]
                if system == "aetrain"
                else command[2:-4]
            )
            stamp = out / "command.json"
            reused = (
                args.reuse
                and (out / "curve.json").exists()
                and stamp.exists()
                and json.loads(stamp.read_text()) == setup
            )
            if reused:
                print("    reused (--reuse): the curve of an earlier run with this setup")
            else:
                log = out.with_suffix(".log")
                log.parent.mkdir(parents=True, exist_ok=True)
                (out / "curve.json").unlink(missing_ok=True)
                with log.open("w") as handle:
                    subprocess.run(
                        command, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env
                    )
                stamp.write_text(json.dumps(setup))
            curve = json.loads((out / "curve.json").read_text())
            curves[system].append(curve)
            last = curve[-1]
            print(
                f"    AP {last['AP']:.3f} AP50 {last['AP50']:.3f} after {last['epoch']:g} "
                f"epochs, {last['cpu_s']:.0f} CPU s",
                flush=True,
            )
    report(args, curves)


def cfg_digest(name: str) -> str:
    """A digest of the cfg's text: a bundled cfg edited since a run is another setup."""
    from ae_model.cfg import resolve_cfg

    return hashlib.sha256(resolve_cfg(name).text.encode()).hexdigest()[:16]


def prepare_data(args: argparse.Namespace) -> Path:
    """The generated dataset in COCO layout, with YOLO labels and a data.yaml beside it."""
    from ae_model.data.synthetic import generate_dataset

    root = args.out / f"digits-{args.train}-{args.val}-{args.size}"
    if not (root / "data.yaml").exists():
        generate_dataset(
            "digits",
            root,
            train=args.train,
            val=args.val,
            size=args.size,
            seed=0,
            min_scale=0.12,
            max_scale=0.35,
            max_objects=4,
        )
        write_yolo_labels(root)
    return root


def write_yolo_labels(root: Path) -> None:
    """Ultralytics reads ``labels/{split}/NAME.txt`` beside ``images/{split}/NAME.png``."""
    names: list[str] = []
    for split in ("train", "val"):
        coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        names = [c["name"] for c in categories]
        index = {c["id"]: k for k, c in enumerate(categories)}
        images = {image["id"]: image for image in coco["images"]}
        lines: dict[int, list[str]] = {image_id: [] for image_id in images}
        for a in coco["annotations"]:
            image = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            cx, cy = (x + w / 2) / image["width"], (y + h / 2) / image["height"]
            lines[a["image_id"]].append(
                f"{index[a['category_id']]} {cx:.6f} {cy:.6f} "
                f"{w / image['width']:.6f} {h / image['height']:.6f}"
            )
        folder = root / "labels" / split
        folder.mkdir(parents=True, exist_ok=True)
        for image_id, image in images.items():
            text = "\n".join(lines[image_id])
            (folder / f"{Path(image['file_name']).stem}.txt").write_text(text + "\n")
    yaml_names = json.dumps(dict(enumerate(names)))
    (root / "data.yaml").write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames: {yaml_names}\n"
    )


def ap_within(curve: list[dict[str, float]], budget: float) -> float:
    """AP at the last evaluated epoch whose training took at most ``budget`` CPU seconds."""
    within = [point["AP"] for point in curve if point["cpu_s"] <= budget * 1.0001]
    return within[-1] if within else 0.0


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f}" + ("" if math.isnan(sd) else f" ± {sd:.3f}")


def report(args: argparse.Namespace, curves: dict[str, list[list[dict[str, float]]]]) -> None:
    budget = min(curve[-1]["cpu_s"] for runs in curves.values() for curve in runs)
    print(
        f"\n{args.epochs} epochs, {args.train} train / {args.val} val digits at {args.size} px, "
        f"{args.threads} threads, seeds {args.seeds} (mean ± sd over seeds)"
    )
    print(f"equal CPU time: {budget:.0f} CPU s (the shortest run)\n")
    header = (
        f"{'system':<14} {'AP@epochs':>16} {'AP50@epochs':>16} {'CPU s':>8} {'AP@equal CPU':>16}"
    )
    print(header)
    summary: dict[str, Any] = {
        "budget_cpu_s": budget,
        "args": vars(args) | {"out": str(args.out), "ultra_python": str(args.ultra_python)},
        "systems": {},
    }
    for system, runs in curves.items():
        final = [curve[-1] for curve in runs]
        at_budget = [ap_within(curve, budget) for curve in runs]
        cpu = statistics.mean(point["cpu_s"] for point in final)
        print(
            f"{system:<14} {mean_sd([p['AP'] for p in final]):>16} "
            f"{mean_sd([p['AP50'] for p in final]):>16} {cpu:>8.0f} {mean_sd(at_budget):>16}"
        )
        summary["systems"][system] = {"curves": runs, "ap_at_budget": at_budget}
    (args.out / "tta.json").write_text(json.dumps(summary, indent=1))
    profile(curves)
    plot(args, curves, args.out / "tta.png")
    print(f"\ncurves: {args.out / 'tta.json'}, plot: {args.out / 'tta.png'}")


# Where AP is lost, from the last epoch's evaluation: localisation (AP50 against AP75), object
# size, and classification (a detection scored against a truth of any class: COCOeval useCats=0).
PROFILE = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP_agnostic", "AP50_agnostic")


def profile(curves: dict[str, list[list[dict[str, float]]]]) -> None:
    print("\nat the last epoch (mean over seeds; _agnostic: any class may match a truth)")
    print(f"{'system':<14}" + "".join(f"{name:>14}" for name in PROFILE))
    for system, runs in curves.items():
        finals = [curve[-1] for curve in runs]
        cells = [
            statistics.mean(point[name] for point in finals) if name in finals[0] else math.nan
            for name in PROFILE
        ]
        print(f"{system:<14}" + "".join(f"{value:>14.3f}" for value in cells))


def plot(
    args: argparse.Namespace, curves: dict[str, list[list[dict[str, float]]]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_epoch, by_cpu) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for k, (system, runs) in enumerate(curves.items()):
        colour = f"C{k}"
        for n, curve in enumerate(runs):
            label = system if n == 0 else None
            by_epoch.plot(
                [p["epoch"] for p in curve],
                [p["AP"] for p in curve],
                colour,
                marker=".",
                label=label,
                alpha=0.8,
            )
            by_cpu.plot(
                [p["cpu_s"] for p in curve], [p["AP"] for p in curve], colour, marker=".", alpha=0.8
            )
    by_epoch.set(xlabel="epoch", ylabel="COCO AP (0.5:0.95), val")
    by_cpu.set(xlabel=f"training CPU seconds ({args.threads} threads)")
    by_epoch.legend()
    for axis in (by_epoch, by_cpu):
        axis.grid(alpha=0.3)
    fig.suptitle(f"From scratch on digits ({args.train} train / {args.val} val, {args.size} px)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -- the children: one training run each ----------------------------------------------------
def run_aetrain(args: argparse.Namespace) -> list[dict[str, float]]:
    import torch

    from ae_model.data.datasets import open_dataset
    from ae_model.options import TrainConfig
    from ae_model.train import Hook, Trainer

    torch.set_num_threads(args.threads)
    # Without a batch of its own, aetrain trains at --batch, as the epochs below are counted.
    options = {"batch": args.batch, **json.loads(args.aetrain_train)}
    per_epoch = math.ceil(len(open_dataset(args.data, "train")) / options["batch"])

    class CpuClock(Hook):
        """Training CPU seconds: every step's, none of the evaluations'."""

        def __init__(self) -> None:
            self.mark = time.process_time()
            self.cpu = 0.0
            self.curve: list[dict[str, float]] = []

        def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
            now = time.process_time()
            self.cpu += now - self.mark
            self.mark = now

        def after_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
            point = {"epoch": trainer.iteration / per_epoch, "cpu_s": self.cpu}
            self.curve.append(point | {k: metrics[k] for k in PROFILE if k in metrics})
            self.mark = time.process_time()

    clock = CpuClock()
    config = TrainConfig(
        cfg=args.aetrain_cfg,
        data=str(args.data),
        out=str(args.out),
        seed=args.seed,
        max_batches=per_epoch * args.epochs,
        width=args.size,
        height=args.size,
        workers=0,
        eval_interval=per_epoch,
        checkpoint_interval=0,
        **options,
    )
    trainer = Trainer(config, hooks=[clock])
    trainer.train()
    model = trainer.eval_model.eval()
    with torch.no_grad():
        evaluator = trainer.coco_evaluation(model, trainer.val_set, trainer.val_set)
    agnostic = evaluator.summarize(class_agnostic=True)
    clock.curve[-1] |= {"AP_agnostic": agnostic["AP"], "AP50_agnostic": agnostic["AP50"]}
    return clock.curve


def run_ultralytics(args: argparse.Namespace) -> list[dict[str, float]]:
    import torch
    from ultralytics import YOLO  # type: ignore[import-not-found]  # the bench env only

    torch.set_num_threads(args.threads)
    spent = {"cpu": 0.0, "start": 0.0}
    cpu_at_epoch: list[float] = []

    def epoch_start(trainer: Any) -> None:
        spent["start"] = time.process_time()

    def epoch_end(trainer: Any) -> None:
        spent["cpu"] += time.process_time() - spent["start"]
        cpu_at_epoch.append(spent["cpu"])

    model = YOLO(ULTRALYTICS[args.run])
    model.add_callback("on_train_epoch_start", epoch_start)
    model.add_callback("on_train_epoch_end", epoch_end)
    # Defaults but for what must match the other systems: no flips (a mirrored digit is
    # another glyph or none), loading in-process, no validation inside the timed loop.
    model.train(
        data=str(args.data / "data.yaml"),
        epochs=args.epochs,
        imgsz=args.size,
        batch=args.batch,
        workers=0,
        device="cpu",
        pretrained=False,
        amp=False,
        val=False,
        plots=False,
        fliplr=0.0,
        seed=args.seed,
        deterministic=True,
        project=str(args.out),
        name="train",
        exist_ok=True,
        save_period=1,
        verbose=False,
    )
    weights = sorted(
        (args.out / "train" / "weights").glob("epoch*.pt"),
        key=lambda p: int(p.stem.removeprefix("epoch")),
    )
    curve = []
    for path, cpu in zip(weights, cpu_at_epoch, strict=True):
        evaluator = evaluate_ultralytics(YOLO(str(path)), args)
        metrics = evaluator.summarize()
        epoch = int(path.stem.removeprefix("epoch")) + 1
        point = {"epoch": float(epoch), "cpu_s": cpu}
        curve.append(point | {k: metrics[k] for k in PROFILE if k in metrics})
    agnostic = evaluator.summarize(class_agnostic=True)
    curve[-1] |= {"AP_agnostic": agnostic["AP"], "AP50_agnostic": agnostic["AP50"]}
    return curve


def evaluate_ultralytics(model: Any, args: argparse.Namespace) -> Any:
    """Ultralytics' own boxes on the val split in aetrain's COCOEvaluator, to summarize."""
    import torch
    from pycocotools.coco import COCO

    from ae_model.evaluate import COCOEvaluator, Detections

    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            gt = COCO(str(args.data / "annotations" / "instances_val.json"))
        finally:
            sys.stdout = stdout
    category_ids = sorted(gt.getCatIds())
    evaluator = COCOEvaluator(gt, category_ids)
    images = gt.loadImgs(gt.getImgIds())
    for start in range(0, len(images), 32):
        chunk = images[start : start + 32]
        paths = [str(args.data / "images" / "val" / image["file_name"]) for image in chunk]
        results = model.predict(
            paths, imgsz=args.size, conf=0.001, iou=0.7, max_det=100, device="cpu", verbose=False
        )
        for image, result in zip(chunk, results, strict=True):
            boxes = result.boxes
            evaluator.update(
                image["id"],
                Detections(boxes.xyxy.float(), boxes.conf.float(), boxes.cls.to(torch.long)),
            )
    return evaluator


if __name__ == "__main__":
    main()
