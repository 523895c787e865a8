"""Post-processing and COCO scoring on hand-made detections."""

import contextlib
import io
from typing import Any

import pytest
import torch
from pycocotools.coco import COCO

from ae_model.evaluate import COCOEvaluator, Detections, postprocess


def _coco(boxes_per_image: dict[int, list[tuple[float, float, float, float, int]]]) -> COCO:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, boxes in boxes_per_image.items():
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 100, "height": 100})
        for x, y, w, h, cat in boxes:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
            })  # fmt: skip
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_postprocess_scores_nms_and_multilabel() -> None:
    # One image, 3 candidate boxes (cx, cy, w, h, obj, p_class0, p_class1).
    out = torch.tensor([[
        [50.0, 50.0, 20.0, 20.0, 0.9, 0.8, 0.001],   # class 0, score 0.72
        [51.0, 50.0, 20.0, 20.0, 0.5, 0.8, 0.6],     # overlaps the first: class 0 suppressed
        [10.0, 10.0, 4.0, 4.0, 0.001, 0.5, 0.5],      # scores 0.0005 < 0.005: dropped
    ]])  # fmt: skip
    (det,) = postprocess(out, conf_thresh=0.005, nms_thresh=0.45)
    assert det.labels.tolist() == [0, 1]
    assert det.scores.tolist() == pytest.approx([0.72, 0.3])
    assert det.boxes[0].tolist() == pytest.approx([40.0, 40.0, 60.0, 60.0])


def test_perfect_detections_score_ap_one_and_none_score_zero() -> None:
    gt: dict[int, list[tuple[float, float, float, float, int]]] = {
        1: [(10, 10, 30, 40, 3)],
        2: [(50, 20, 30, 30, 7), (5, 60, 20, 20, 3)],
    }
    coco = _coco(gt)
    evaluator = COCOEvaluator(coco, category_ids=[3, 7])
    for image_id, boxes in gt.items():
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h, _ in boxes])
        labels = torch.tensor([[3, 7].index(c) for *_, c in boxes])
        evaluator.update(image_id, Detections(xyxy, torch.full((len(boxes),), 0.9), labels))
    metrics = evaluator.summarize()
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP_class/3"] == pytest.approx(1.0)

    empty = COCOEvaluator(coco, category_ids=[3, 7])
    for image_id in gt:
        empty.update(image_id, Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0)))
    nothing = empty.summarize()
    assert nothing["AP"] == 0.0
    # COCO's -1 marks an area range without ground truth (all boxes here are medium or small),
    # with or without detections: "no objects" must not read as "missed every object".
    assert nothing["APl"] == metrics["APl"] == -1.0
    assert nothing["APm"] == 0.0


def test_shifted_box_counts_at_iou_half_but_not_at_075() -> None:
    coco = _coco({1: [(0, 0, 40, 40, 3)]})
    evaluator = COCOEvaluator(coco, category_ids=[3, 7])
    # Shift by 10 px: IoU = 30*40 / (2*1600 - 1200) = 0.6, between 0.5 and 0.75.
    box = torch.tensor([[10.0, 0.0, 50.0, 40.0]])
    evaluator.update(1, Detections(box, torch.tensor([0.9]), torch.tensor([0])))
    metrics = evaluator.summarize()
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)


def test_class_agnostic_scoring_forgives_only_the_wrong_class() -> None:
    gt: dict[int, list[tuple[float, float, float, float, int]]] = {
        1: [(10, 10, 30, 40, 3)],
        2: [(50, 20, 30, 30, 7)],
    }
    evaluator = COCOEvaluator(_coco(gt), category_ids=[3, 7])
    # Both boxes exact, the second labelled with the other class.
    evaluator.update(1, Detections(torch.tensor([[10.0, 10, 40, 50]]), torch.tensor([0.9]),
                                   torch.tensor([0])))  # fmt: skip
    evaluator.update(2, Detections(torch.tensor([[50.0, 20, 80, 50]]), torch.tensor([0.9]),
                                   torch.tensor([0])))  # fmt: skip
    aware, agnostic = evaluator.summarize(), evaluator.summarize(class_agnostic=True)
    assert aware["AP"] == pytest.approx(0.5)  # class a found, class b missed
    assert agnostic["AP"] == pytest.approx(1.0) and "AP_class/3" not in agnostic
    matches = evaluator.image_matches()  # still the class-aware scoring's: one of two matched
    assert matches is not None and matches.matched[0].tolist() == [True, False]
