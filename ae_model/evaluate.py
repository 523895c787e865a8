"""COCO evaluation with pycocotools: decode, NMS (torchvision), map back, COCOeval (bbox)."""

import contextlib
import io
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import batched_nms

from ae_model.compare.image_bootstrap import ImageMatches, write_matches

# The 12 COCOeval.stats entries, in pycocotools' order.
STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip


@dataclass(frozen=True)
class Detections:
    """One image's detections.

    ``boxes (K, 4)`` x1y1x2y2 pixels, ``scores (K,)``, ``labels (K,)`` contiguous class indices.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def postprocess(
    output: torch.Tensor,
    conf_thresh: float = 0.005,
    nms_thresh: float = 0.45,
    max_detections: int = 100,
) -> list[Detections]:
    """Decoded network output ``(B, N, 5 + C)`` (cx, cy, w, h, objectness, class probabilities)
    -> per-image detections after per-class NMS, in network-input pixels.

    Like darknet's mAP tool, each class whose ``objectness * probability`` exceeds
    ``conf_thresh`` yields its own candidate box.
    """
    batch, _, width = output.shape
    num_classes = width - 5
    xy, wh = output[..., :2], output[..., 2:4]
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=-1)
    scores = output[..., 4:5] * output[..., 5:]  # (B, N, C)
    image_idx, box_idx, label = (scores > conf_thresh).nonzero(as_tuple=True)
    cand_boxes = boxes[image_idx, box_idx]
    cand_scores = scores[image_idx, box_idx, label]
    # One NMS call for the whole batch: groups are (image, class) pairs.
    keep = batched_nms(cand_boxes.float(), cand_scores.float(), image_idx * num_classes + label,
                       nms_thresh)  # fmt: skip
    image_idx, cand_boxes, cand_scores, label = (
        image_idx[keep],
        cand_boxes[keep],
        cand_scores[keep],
        label[keep],
    )
    results = []
    for b in range(batch):
        sel = (image_idx == b).nonzero(as_tuple=True)[0][:max_detections]  # keep is score-sorted
        results.append(Detections(cand_boxes[sel], cand_scores[sel], label[sel]))
    return results


class COCOEvaluator:
    """Accumulates detections in original-image pixels and scores them with COCOeval (bbox).

    ``category_ids[k]`` is the COCO category id of contiguous class index ``k``.
    """

    def __init__(self, coco_gt: COCO, category_ids: Sequence[int]) -> None:
        self.coco_gt = coco_gt
        self.category_ids = np.asarray(category_ids)
        self._rows: list[np.ndarray] = []
        self._image_ids: list[int] = []
        self.inference_seconds = 0.0
        self.images_seen = 0
        self._scored: COCOeval | None = None  # the last summarize()'s, for its matches

    def update(self, image_id: int, detections: Detections) -> None:
        """Add one image's detections, boxes already in that image's original pixels."""
        self._image_ids.append(int(image_id))
        if detections.boxes.numel() == 0:
            return
        boxes = detections.boxes.detach().float().cpu().numpy()
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        labels = detections.labels.cpu().numpy()
        rows = np.column_stack(
            [
                np.full(len(boxes), image_id, dtype=np.float64),
                xywh,
                detections.scores.detach().float().cpu().numpy(),
                self.category_ids[labels],
            ]
        )
        self._rows.append(rows)

    def _results(self) -> COCO:
        if self._rows:
            return self.coco_gt.loadRes(np.concatenate(self._rows))
        # loadRes rejects an empty list; an empty result set still scores 0 where there is
        # ground truth and -1 (COCO's "undefined") for area ranges without any.
        empty = COCO()
        empty.dataset = {**self.coco_gt.dataset, "annotations": []}
        empty.createIndex()
        return empty

    def summarize(self, class_agnostic: bool = False) -> dict[str, float]:
        """COCO metrics on the images seen so far (AP... as fractions in [0, 1]).

        Also ``AP_class/<category id>`` per class and ``latency_ms`` per image when timed.
        ``class_agnostic``: a detection may match a truth of any class (COCOeval's
        ``useCats=0``), so the metrics leave classification errors out.
        """
        metrics = dict.fromkeys(STAT_NAMES, 0.0)
        if self._image_ids:
            # COCOeval prints its tables; the caller reports the numbers its own way.
            with contextlib.redirect_stdout(io.StringIO()):
                coco_dt = self._results()
                evaluator = COCOeval(self.coco_gt, coco_dt, iouType="bbox")
                evaluator.params.imgIds = sorted(set(self._image_ids))
                evaluator.params.useCats = 0 if class_agnostic else 1
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            metrics = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}
            if not class_agnostic:  # image_matches() are the class-aware ones
                self._scored = evaluator
            # precision: (T iou thresholds, R recall points, K classes, A areas, M max dets)
            precision = evaluator.eval["precision"][:, :, :, 0, -1]
            for k, cat_id in enumerate(evaluator.params.catIds if not class_agnostic else []):
                valid = precision[:, :, k][precision[:, :, k] > -1]
                metrics[f"AP_class/{cat_id}"] = float(valid.mean()) if valid.size else 0.0
        if self.images_seen:
            metrics["latency_ms"] = 1000 * self.inference_seconds / self.images_seen
        return metrics

    def image_matches(self) -> ImageMatches | None:
        """The last :meth:`summarize`'s detections and per-image matches; None before one
        that saw an image."""
        return None if self._scored is None else image_matches(self._scored)

    def write_detections(self, path: Path, iteration: int) -> None:
        """Write :meth:`image_matches` (gzipped JSON, ``ae_model.compare.image_bootstrap``);
        nothing when there are none."""
        matches = self.image_matches()
        if matches is not None:
            write_matches(matches, path, iteration)


def image_matches(evaluator: COCOeval) -> ImageMatches:
    """The per-image matches ``evaluator.evaluate()`` made, for area "all" and the most
    detections per image, in the order ``accumulate()`` reads them."""
    params = evaluator.params
    images, thresholds = len(params.imgIds), len(params.iouThrs)
    area_all = params.areaRngLbl.index("all") * images
    gt_count = np.zeros((images, len(params.catIds)), dtype=np.int64)
    rows: list[tuple[int, int, float, int]] = []  # image index, category index, score, dt id
    matched, ignored = [np.zeros((thresholds, 0), dtype=bool)], [np.zeros((thresholds, 0), bool)]
    for k in range(len(params.catIds)):
        for i in range(images):
            entry = evaluator.evalImgs[k * len(params.areaRng) * images + area_all + i]
            if entry is None:  # neither ground truth nor detections of this category here
                continue
            gt_count[i, k] = np.count_nonzero(np.asarray(entry["gtIgnore"]) == 0)
            scored = zip(entry["dtScores"], entry["dtIds"], strict=True)
            rows.extend((i, k, score, dt_id) for score, dt_id in scored)
            matched.append(np.asarray(entry["dtMatches"]) > 0)
            ignored.append(np.asarray(entry["dtIgnore"]) > 0)
    anns = evaluator.cocoDt.anns
    return ImageMatches(
        image_ids=np.asarray(params.imgIds, dtype=np.int64),
        category_ids=np.asarray(params.catIds, dtype=np.int64),
        iou_thresholds=np.asarray(params.iouThrs, dtype=float),
        gt_count=gt_count,
        det_image=np.asarray([r[0] for r in rows], dtype=np.int64),
        det_category=np.asarray([r[1] for r in rows], dtype=np.int64),
        det_score=np.asarray([r[2] for r in rows], dtype=float),
        det_bbox=np.asarray([anns[r[3]]["bbox"] for r in rows], dtype=float).reshape(-1, 4),
        matched=np.concatenate(matched, axis=1),
        ignored=np.concatenate(ignored, axis=1),
    )


@contextlib.contextmanager
def timed(evaluator: COCOEvaluator, images: int, device: torch.device) -> Iterator[None]:
    """Adds the wall time of the block (synchronised on CUDA) to the evaluator's latency."""
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    evaluator.inference_seconds += time.perf_counter() - start
    evaluator.images_seen += images
