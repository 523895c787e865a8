"""Anchors fitted to a dataset's boxes (no torch).

Darknet's ``calc_anchors`` and YOLOv2's paper choose anchors by k-means over the training
boxes' width and height with the distance ``1 - IoU(box, centroid)`` (boxes and centroids
sharing a centre), so that large boxes do not dominate as they would under Euclidean distance.
:func:`fit_anchors` does that, deterministically (k-means++ seeding from a fixed seed, then
Lloyd's iterations), in network pixels; :func:`mean_best_iou` is the figure it improves.
"""

import numpy as np

# Enough for the centroids to settle on datasets of up to ~10^5 boxes; k-means stops earlier
# when no box changes cluster.
MAX_ITERATIONS = 300
# At most this many boxes take part (a seeded sample beyond it): k-means over 2-D points
# gains nothing from more, and a job's start stays fast on large datasets.
MAX_BOXES = 100_000


def box_anchor_iou(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU ``(N, K)`` of boxes ``(N, 2)`` and anchors ``(K, 2)`` (widths and heights) placed on
    one centre, as darknet compares a truth with its anchors."""
    inter = np.minimum(boxes[:, None, 0], anchors[None, :, 0]) * np.minimum(
        boxes[:, None, 1], anchors[None, :, 1]
    )
    union = boxes.prod(axis=1)[:, None] + anchors.prod(axis=1)[None, :] - inter
    iou: np.ndarray = inter / union
    return iou


def mean_best_iou(boxes: np.ndarray, anchors: np.ndarray) -> float:
    """The mean over boxes of the IoU with the best-fitting anchor (darknet's "avg IoU")."""
    return float(box_anchor_iou(boxes, anchors).max(axis=1).mean())


def fit_anchors(boxes: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` anchors ``(count, 2)`` for boxes ``(N, 2)`` (width, height in network pixels):
    IoU k-means, sorted by area as darknet lists anchors, rounded to whole pixels (at least 1).

    Raises:
        ValueError: fewer distinct boxes than ``count``, or a box without area.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(boxes).all() or (boxes <= 0).any():
        raise ValueError("every box needs a finite, positive width and height")
    rng = np.random.default_rng(seed)
    if len(boxes) > MAX_BOXES:
        boxes = boxes[rng.choice(len(boxes), MAX_BOXES, replace=False)]
    if len(np.unique(boxes, axis=0)) < count:
        raise ValueError(f"{len(boxes)} boxes hold fewer than {count} distinct sizes")
    centroids = _seed_centroids(boxes, count, rng)
    assignment = np.full(len(boxes), -1)
    for _ in range(MAX_ITERATIONS):
        nearest = box_anchor_iou(boxes, centroids).argmax(axis=1)
        if (nearest == assignment).all():
            break
        assignment = nearest
        for k in range(count):
            members = boxes[assignment == k]
            if len(members):  # an emptied cluster keeps its centroid
                centroids[k] = members.mean(axis=0)
    anchors = np.maximum(np.rint(centroids), 1)
    ordered: np.ndarray = anchors[np.argsort(anchors.prod(axis=1), kind="stable")]
    return ordered


def _seed_centroids(boxes: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++: each next centroid drawn with probability growing with its distance
    ``1 - IoU`` to the nearest chosen one (distinct boxes only, so no two coincide)."""
    distinct = np.unique(boxes, axis=0)
    chosen = [distinct[rng.integers(len(distinct))]]
    for _ in range(count - 1):
        distance = 1 - box_anchor_iou(distinct, np.array(chosen)).max(axis=1)
        chosen.append(distinct[rng.choice(len(distinct), p=distance / distance.sum())])
    return np.array(chosen, dtype=np.float64)
