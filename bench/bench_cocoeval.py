"""COCOeval time on a generated 5,000-image val set: pycocotools vs faster-coco-eval.

Builds COCO-format ground truth in memory (boxes drawn as ``ae_model.data.synthetic`` draws objects:
1-6 per image, side ``size * exp(U(log 0.05, log 0.3))``, a random class) and detections as a
detector would leave them after NMS: most ground-truth boxes found again with jitter, some with
the wrong class or twice, plus false positives, all with scores. Detections go in as the
``(N, 7)`` array ``image_id, x, y, w, h, score, category_id`` that ``ae_model.evaluate``'s
``COCOEvaluator`` passes to ``loadRes``. Then times ``evaluate() + accumulate() + summarize()``
of pycocotools' ``COCOeval`` and of faster-coco-eval's ``COCOeval_faster`` on the same data,
alternating, and checks that the 12 stats (and the precision/recall arrays behind them) are
identical: the project switches only if they are.

    python bench/bench_cocoeval.py
    python bench/bench_cocoeval.py --images 5000 --repeats 3

faster-coco-eval is not a project dependency: install it in the benchmark environment only
(``pip install faster-coco-eval``, see bench/README.md).
"""

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from bench_train import cpu_model
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ae_model.evaluate import STAT_NAMES

# ae_model.data.synthetic's defaults: objects per image and object side as a fraction of the image.
MIN_OBJECTS, MAX_OBJECTS = 1, 6
MIN_SCALE, MAX_SCALE = 0.05, 0.3
# COCO's area ranges (pixels^2), for the counts printed with the data.
SMALL_AREA, LARGE_AREA = 32**2, 96**2


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="val images")
    parser.add_argument("--size", type=int, default=512,
                        help="image side (px): 512 puts boxes in all COCO area ranges")  # fmt: skip
    parser.add_argument("--categories", type=int, default=10, help="classes (10: the digits)")
    parser.add_argument("--recall", type=float, default=0.9,
                        help="share of ground-truth boxes detected again")  # fmt: skip
    parser.add_argument("--false-positives", type=float, default=20.0,
                        help="mean false positives per image (Poisson)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per library")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def random_boxes(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """``(count, 4)`` x, y, w, h inside a ``size`` square, sides as the dataset generator's."""
    side = size * np.exp(rng.uniform(np.log(MIN_SCALE), np.log(MAX_SCALE), count))
    wh = side[:, None] * np.exp(rng.normal(0.0, 0.2, (count, 2)))  # not all square
    wh = np.minimum(wh, size - 1)
    xy = rng.uniform(0.0, 1.0, (count, 2)) * (size - wh)
    return np.concatenate([xy, wh], axis=1)


def ground_truth(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    """A COCO detection dataset (dict) of ``args.images`` images."""
    counts = rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1, args.images)
    image_ids = np.repeat(np.arange(1, args.images + 1), counts)
    boxes = random_boxes(rng, len(image_ids), args.size)
    classes = rng.integers(1, args.categories + 1, len(image_ids))
    annotations = [
        {
            "id": i + 1,
            "image_id": int(image_id),
            "category_id": int(cls),
            "bbox": [float(v) for v in box],
            "area": float(box[2] * box[3]),
            "iscrowd": 0,
        }
        for i, (image_id, cls, box) in enumerate(zip(image_ids, classes, boxes, strict=True))
    ]
    images = [
        {"id": i, "width": args.size, "height": args.size, "file_name": f"{i:06d}.png"}
        for i in range(1, args.images + 1)
    ]
    categories = [{"id": c, "name": str(c - 1)} for c in range(1, args.categories + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections(
    gt: dict[str, Any], args: argparse.Namespace, rng: np.random.Generator
) -> np.ndarray:
    """``(N, 7)`` rows ``image_id, x, y, w, h, score, category_id`` for ``gt``'s images."""
    anns = gt["annotations"]
    image_ids = np.array([a["image_id"] for a in anns], dtype=np.float64)
    boxes = np.array([a["bbox"] for a in anns])
    classes = np.array([a["category_id"] for a in anns], dtype=np.float64)

    found = rng.random(len(anns)) < args.recall
    # A found box: centre moved and sides scaled by a few percent of its size.
    jittered = boxes.copy()
    jittered[:, 2:] *= np.exp(rng.normal(0.0, 0.12, (len(anns), 2)))
    jittered[:, :2] += boxes[:, 2:] * rng.normal(0.0, 0.08, (len(anns), 2))
    jittered[:, :2] -= (jittered[:, 2:] - boxes[:, 2:]) / 2
    wrong = rng.random(len(anns)) < 0.05
    det_classes = np.where(wrong, rng.integers(1, args.categories + 1, len(anns)), classes)
    scores = rng.uniform(0.3, 1.0, len(anns))
    hits = np.column_stack([image_ids, jittered, scores, det_classes])[found]
    # Duplicates NMS left in: a second, lower-scored box on some objects.
    again = hits[rng.random(len(hits)) < 0.2].copy()
    again[:, 1:5] = again[:, 1:5] + again[:, [3, 4, 3, 4]] * rng.normal(0.0, 0.1, (len(again), 4))
    again[:, 5] *= 0.5

    num_fp = rng.poisson(args.false_positives, args.images)
    fp_images = np.repeat(np.arange(1, args.images + 1), num_fp).astype(np.float64)
    false_positives = np.column_stack(
        [
            fp_images,
            random_boxes(rng, len(fp_images), args.size),
            rng.uniform(0.0, 0.6, len(fp_images)),
            rng.integers(1, args.categories + 1, len(fp_images)),
        ]
    )
    rows = np.concatenate([hits, again, false_positives])
    rows[:, 3:5] = np.maximum(rows[:, 3:5], 1.0)  # no empty boxes
    return rows


def run_eval(
    coco_class: Any, eval_class: Any, gt: dict[str, Any], rows: np.ndarray
) -> tuple[dict[str, float], Any]:
    """Index ``gt``, load ``rows``, evaluate; seconds per phase and the finished evaluator."""
    seconds: dict[str, float] = {}
    # Both libraries print progress; the benchmark prints its own table.
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        coco_gt = coco_class()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        seconds["index ground truth"] = time.perf_counter() - start
        start = time.perf_counter()
        coco_dt = coco_gt.loadRes(rows)
        seconds["loadRes (N x 7 array)"] = time.perf_counter() - start
        start = time.perf_counter()
        evaluator = eval_class(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        seconds["evaluate+accumulate+summarize"] = time.perf_counter() - start
    return seconds, evaluator


def import_faster() -> tuple[Any, Any] | None:
    """faster-coco-eval's ``COCO`` and ``COCOeval_faster``, or None when not installed."""
    if importlib.util.find_spec("faster_coco_eval") is None:
        return None
    module = importlib.import_module("faster_coco_eval")
    return module.COCO, module.COCOeval_faster


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def compare(ours: Any, theirs: Any) -> None:
    """Prints the 12 stats side by side and whether they (and the arrays behind them) match."""
    a, b = np.asarray(ours.stats), np.asarray(theirs.stats)
    print(f"{'stat':<6} {'pycocotools':>20} {'faster-coco-eval':>20} {'difference':>12}")
    for name, x, y in zip(STAT_NAMES, a, b, strict=True):
        print(f"{name:<6} {x:>20.17f} {y:>20.17f} {y - x:>12.3g}")
    identical = np.array_equal(a, b)
    print(
        f"12 stats identical (exact equality): {'yes' if identical else 'NO'}; "
        f"max abs difference {max_abs_diff(a, b):.3g}"
    )
    for key in ("precision", "recall"):
        x, y = np.asarray(ours.eval[key]), np.asarray(theirs.eval[key])
        if x.shape != y.shape:
            print(f"eval[{key!r}]: shapes differ, {x.shape} vs {y.shape}")
            continue
        differ = int(np.sum(x != y))
        print(
            f"eval[{key!r}] {x.shape}: {differ} of {x.size} entries differ, max abs difference "
            f"{max_abs_diff(x, y):.3g}"
        )
    # ae_model.evaluate's per-class AP: mean valid precision, all areas, 100 detections.
    ap_ours, ap_theirs = (class_ap(e.eval["precision"]) for e in (ours, theirs))
    same = np.array_equal(ap_ours, ap_theirs)
    print(
        f"per-class AP as ae_model.evaluate reads it: {'identical' if same else 'DIFFERENT'}, "
        f"max abs difference {max_abs_diff(ap_ours, ap_theirs):.3g}"
    )


def class_ap(precision: np.ndarray) -> np.ndarray:
    """``(K,)`` AP per class from COCOeval's ``(T, R, K, A, M)`` precision: area "all", the
    largest maxDets, entries of -1 (no ground truth) left out, 0 for a class with none."""
    valid = np.ma.masked_less(np.asarray(precision)[:, :, :, 0, -1], 0)
    return np.asarray(valid.mean(axis=(0, 1)).filled(0.0))


def main(args: argparse.Namespace) -> None:
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("date:", datetime.now(UTC).isoformat(timespec="seconds"))
    faster = import_faster()
    versions = f"pycocotools {importlib.metadata.version('pycocotools')}, " + (
        f"faster-coco-eval {importlib.metadata.version('faster-coco-eval')}"
        if faster
        else "faster-coco-eval not installed"
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: {cpu_model()}, {cores} cores usable, Python {platform.python_version()}, "
        f"numpy {np.__version__}, {versions}"
    )
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    gt = ground_truth(args, rng)
    rows = detections(gt, args, rng)
    areas = np.array([a["area"] for a in gt["annotations"]])
    print(
        f"data: {args.images} images {args.size}x{args.size}, {args.categories} categories, "
        f"{len(areas)} ground-truth boxes (small {np.sum(areas < SMALL_AREA)}, medium "
        f"{np.sum((areas >= SMALL_AREA) & (areas < LARGE_AREA))}, large "
        f"{np.sum(areas >= LARGE_AREA)}), {len(rows)} detections "
        f"({len(rows) / args.images:.1f} per image); built in {time.perf_counter() - start:.1f} s"
    )
    if faster is None:
        print(
            "faster-coco-eval is not importable here: install it in the benchmark environment "
            "(~/.cache/aetrain-bench/peers/bin/pip install faster-coco-eval, see "
            "bench/README.md); timing pycocotools alone",
            file=sys.stderr,
        )
    libraries: dict[str, tuple[Any, Any]] = {"pycocotools": (COCO, COCOeval)}
    if faster is not None:
        libraries["faster-coco-eval"] = faster
    print(f"runs: {args.repeats} per library, alternating; load average {load_average()}")
    times: dict[str, dict[str, list[float]]] = {name: {} for name in libraries}
    evaluators: dict[str, Any] = {}
    names = list(libraries)
    for repeat in range(args.repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            seconds, evaluators[name] = run_eval(*libraries[name], gt, rows)
            for phase, value in seconds.items():
                times[name].setdefault(phase, []).append(value)
    print(f"load average after {load_average()}")
    report(times)
    if faster is not None:
        compare(evaluators["pycocotools"], evaluators["faster-coco-eval"])


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def report(times: dict[str, dict[str, list[float]]]) -> None:
    """Median (min) seconds per phase and library; ratio pycocotools / faster-coco-eval."""
    names = list(times)

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} ({min(values):.3f})"

    header = f"{'seconds, median (min)':<31}" + "".join(f"{n:>20}" for n in names)
    if len(names) == 2:
        header += f"{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for phase in times[names[0]]:
        line = f"{phase:<31}" + "".join(f"{cell(times[n][phase]):>20}" for n in names)
        if len(names) == 2:
            ours, theirs = (statistics.median(times[n][phase]) for n in names)
            line += f"{ours / theirs:>7.1f}x"
        print(line)
    print("ratio: pycocotools' median time / faster-coco-eval's")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
