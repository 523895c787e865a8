"""The image bootstrap's AP over weighted multisets of images is COCOeval's: on the images as
evaluated, and on a resample written out as duplicated images."""

import contextlib
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from ae_model.compare.image_bootstrap import (
    ImageMatches,
    average_precision,
    bootstrap_record,
    read_matches,
    resample_weights,
)
from ae_model.evaluate import COCOEvaluator, Detections

CATEGORIES = [3, 7, 9]  # 9 has detections but no ground truth: COCOeval leaves it out

Box = tuple[float, float, float, float, int, int]  # x, y, w, h, category, iscrowd


def _scene(images: int, seed: int) -> tuple[dict[int, list[Box]], dict[int, list[tuple]]]:
    """Ground truth per image and detections per image (x, y, w, h, category, score): most
    boxes found with jitter, some missed, some false, one crowd box; distinct scores."""
    rng = np.random.default_rng(seed)
    truth: dict[int, list[Box]] = {}
    found: dict[int, list[tuple]] = {}
    for image in range(1, images + 1):
        truth[image], found[image] = [], []
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 70, 2)
            w, h = rng.uniform(10, 30, 2)
            category = int(rng.choice(CATEGORIES[:2]))
            truth[image].append((x, y, w, h, category, int(image == 2)))
            if rng.random() < 0.8:
                jitter = rng.normal(0, 1.0, 4)
                found[image].append((x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3],
                                     category, 0.3 + 0.7 * rng.random()))  # fmt: skip
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 70, 2)
            found[image].append((x, y, 15.0, 15.0, int(rng.choice(CATEGORIES)), 0.6 * rng.random()))
    return truth, found


def _evaluate(truth: dict[int, list[Box]], found: dict[int, list[tuple]]) -> COCOEvaluator:
    annotations = [
        {"id": n, "image_id": image, "category_id": c, "bbox": [x, y, w, h], "area": w * h,
         "iscrowd": crowd}
        for n, (image, (x, y, w, h, c, crowd)) in enumerate(
            ((image, box) for image, boxes in truth.items() for box in boxes), start=1
        )
    ]  # fmt: skip
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in truth],
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in CATEGORIES],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    evaluator = COCOEvaluator(coco, CATEGORIES)
    for image, boxes in found.items():
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h, *_ in boxes]).reshape(-1, 4)
        labels = torch.tensor([CATEGORIES.index(b[4]) for b in boxes], dtype=torch.long)
        scores = torch.tensor([b[5] for b in boxes], dtype=torch.float32)
        evaluator.update(image, Detections(xyxy, scores, labels))
    return evaluator


def _expanded(
    scene: tuple[dict[int, list[Box]], dict[int, list[tuple]]], weights: np.ndarray
) -> tuple[dict[int, list[Box]], dict[int, list[tuple]]]:
    """The resample as a data set: image ``i`` drawn ``w`` times is ``w`` images."""
    truth, found = scene
    copies = [(image, 100 * image + c) for image, w in zip(truth, weights, strict=True)
              for c in range(w)]  # fmt: skip
    return {new: truth[old] for old, new in copies}, {new: found[old] for old, new in copies}


@pytest.fixture(scope="module")
def scene() -> tuple[dict[int, list[Box]], dict[int, list[tuple]]]:
    return _scene(images=40, seed=11)


def test_ap_over_the_images_as_evaluated_is_cocoevals(scene: Any, tmp_path: Path) -> None:
    evaluator = _evaluate(*scene)
    ap = evaluator.summarize()["AP"]
    assert 0.2 < ap < 0.95  # a scene with hits, misses and false positives
    matches = evaluator.image_matches()
    assert matches is not None
    assert average_precision(matches, np.ones(40))[0] == pytest.approx(ap, abs=1e-9)
    evaluator.write_detections(tmp_path / "detections.json.gz", iteration=5)
    again = read_matches(tmp_path / "detections.json.gz")
    assert average_precision(again, np.ones(40))[0] == pytest.approx(ap, abs=1e-9)
    assert again.det_bbox.shape == (len(again.det_score), 4)


def test_ap_of_a_resample_is_cocoevals_on_the_duplicated_images(scene: Any) -> None:
    evaluator = _evaluate(*scene)
    evaluator.summarize()
    matches = evaluator.image_matches()
    assert isinstance(matches, ImageMatches)
    weights = resample_weights(40, resamples=3, seed=4)
    assert (weights.sum(axis=1) == 40).all() and (weights == 0).any()
    bootstrap = average_precision(matches, weights)
    for b in range(3):
        expected = _evaluate(*_expanded(scene, weights[b])).summarize()["AP"]
        assert bootstrap[b] == pytest.approx(expected, abs=1e-6)


def test_a_bootstrap_of_150_images_is_cheap_and_has_spread() -> None:
    scene = _scene(images=150, seed=2)
    evaluator = _evaluate(*scene)
    evaluator.summarize()
    matches = evaluator.image_matches()
    assert matches is not None
    start = time.perf_counter()
    record = bootstrap_record(matches)
    elapsed = time.perf_counter() - start
    assert len(record["values"]) == record["resamples"] == 200 and record["images"] == 150
    assert 0.005 < record["sd"] < 0.1
    assert elapsed < 5, f"{elapsed:.2f} s for 200 resamples"
