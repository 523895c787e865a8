"""COCO evaluation with pycocotools: decode, NMS (torchvision), map back, COCOeval (bbox)."""

import contextlib
import io
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import batched_nms

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

    def summarize(self) -> dict[str, float]:
        """COCO metrics on the images seen so far (AP... as fractions in [0, 1]).

        Also ``AP_class/<category id>`` per class and ``latency_ms`` per image when timed.
        """
        metrics = dict.fromkeys(STAT_NAMES, 0.0)
        if self._image_ids:
            # COCOeval prints its tables; the caller reports the numbers its own way.
            with contextlib.redirect_stdout(io.StringIO()):
                coco_dt = self._results()
                evaluator = COCOeval(self.coco_gt, coco_dt, iouType="bbox")
                evaluator.params.imgIds = sorted(set(self._image_ids))
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            metrics = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}
            # precision: (T iou thresholds, R recall points, K classes, A areas, M max dets)
            precision = evaluator.eval["precision"][:, :, :, 0, -1]
            for k, cat_id in enumerate(evaluator.params.catIds):
                valid = precision[:, :, k][precision[:, :, k] > -1]
                metrics[f"AP_class/{cat_id}"] = float(valid.mean()) if valid.size else 0.0
        if self.images_seen:
            metrics["latency_ms"] = 1000 * self.inference_seconds / self.images_seen
        return metrics


@contextlib.contextmanager
def timed(evaluator: COCOEvaluator, images: int, device: torch.device) -> Iterator[None]:
    """Adds the wall time of the block (synchronised on CUDA) to the evaluator's latency."""
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    evaluator.inference_seconds += time.perf_counter() - start
    evaluator.images_seen += images
