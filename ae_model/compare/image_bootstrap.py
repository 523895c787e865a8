"""How much a model's AP owes to the choice of validation images: a bootstrap over images.

A model's AP on 150 validation images is itself uncertain: another 150 images would give
another AP. COCOeval matches each image's detections to its ground truth on its own
(``evaluate()``, ``evalImgs``); AP over a multiset of the images only adds those matches up
(``accumulate()``). :class:`ImageMatches` keeps the per-image matches of one evaluation
compactly, and :func:`average_precision` computes COCO's AP over many weighted multisets of
images at once (weights = how often a resample drew each image) without running COCOeval again.

The resamples are drawn from a fixed seed and the number of images (:func:`resample_weights`),
so every job evaluated on the same images uses the same resamples: arm A's and arm B's AP on
resample ``b`` form a pair, and the difference's image noise is their paired bootstrap
(``docs/comparisons.md``, "Validation-image noise"). Torch-free (numpy): the API reads these.
"""

import gzip
import hashlib
import json
import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DETECTIONS_FORMAT = "aetrain-detections/1"
DETECTIONS_LAST = "detections-last.json.gz"
RESAMPLES = 200
RESAMPLE_SEED = 0
# COCOeval's 101 recall points (Params.recThrs), made the way pycocotools makes them.
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101, endpoint=True)
TABLE_WIDTH = 100  # as format_table's prose
# Bound on the (resamples, thresholds, detections) arrays of one chunk of resamples.
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class ImageMatches:
    """COCOeval's per-image matching (area "all", 100 detections per image) of one evaluation.

    Detections are in COCOeval's order: by category, then image, then score within the image.

    - ``image_ids (N,)``, ``category_ids (K,)``, ``iou_thresholds (T,)``
    - ``gt_count (N, K)``: ground-truth boxes that count (not crowd) per image and category
    - ``det_image (D,)``, ``det_category (D,)``: indices into ``image_ids``, ``category_ids``
    - ``det_score (D,)``; ``det_bbox (D, 4)`` x, y, w, h in image pixels
    - ``matched (T, D)``: matched to a ground-truth box at each IoU threshold
    - ``ignored (T, D)``: matched to an ignored (crowd) box: neither true nor false positive
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    iou_thresholds: np.ndarray
    gt_count: np.ndarray
    det_image: np.ndarray
    det_category: np.ndarray
    det_score: np.ndarray
    det_bbox: np.ndarray
    matched: np.ndarray
    ignored: np.ndarray

    def to_json(self, iteration: int) -> dict[str, Any]:
        """The file's content (:func:`write_matches`); ``matched``/``ignored`` as bit masks
        over the IoU thresholds, one integer per detection."""
        bits = 1 << np.arange(len(self.iou_thresholds), dtype=np.int64)
        return {
            "format": DETECTIONS_FORMAT,
            "iteration": iteration,
            "image_ids": self.image_ids.tolist(),
            "category_ids": self.category_ids.tolist(),
            "iou_thresholds": self.iou_thresholds.tolist(),
            "gt_count": self.gt_count.tolist(),
            "detections": {
                "image": self.det_image.tolist(),
                "category": self.det_category.tolist(),
                "score": self.det_score.tolist(),
                "bbox": np.round(self.det_bbox, 2).tolist(),
                "matched": (bits @ self.matched).tolist(),
                "ignored": (bits @ self.ignored).tolist(),
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ImageMatches":
        """Inverse of :meth:`to_json`; ``ValueError`` for another format."""
        if data.get("format") != DETECTIONS_FORMAT:
            raise ValueError(f"not a {DETECTIONS_FORMAT} file (format {data.get('format')!r})")
        dets = data["detections"]
        thresholds = np.asarray(data["iou_thresholds"], dtype=float)
        bits = 1 << np.arange(len(thresholds), dtype=np.int64)

        def unpack(masks: list[int]) -> np.ndarray:
            return (np.asarray(masks, dtype=np.int64)[None, :] & bits[:, None]) > 0

        categories = np.asarray(data["category_ids"], dtype=np.int64)
        return cls(
            image_ids=np.asarray(data["image_ids"], dtype=np.int64),
            category_ids=categories,
            iou_thresholds=thresholds,
            gt_count=np.asarray(data["gt_count"], dtype=np.int64).reshape(-1, len(categories)),
            det_image=np.asarray(dets["image"], dtype=np.int64),
            det_category=np.asarray(dets["category"], dtype=np.int64),
            det_score=np.asarray(dets["score"], dtype=float),
            det_bbox=np.asarray(dets["bbox"], dtype=float).reshape(-1, 4),
            matched=unpack(dets["matched"]),
            ignored=unpack(dets["ignored"]),
        )


def write_matches(matches: ImageMatches, path: Path, iteration: int) -> None:
    """Write ``matches`` as gzipped JSON, atomically (a temporary file, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as file:
        json.dump(matches.to_json(iteration), file, separators=(",", ":"))
    tmp.replace(path)


def read_matches(path: Path) -> ImageMatches:
    """The :class:`ImageMatches` of a file :func:`write_matches` wrote."""
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return ImageMatches.from_json(json.load(file))


def resample_weights(
    images: int, resamples: int = RESAMPLES, seed: int = RESAMPLE_SEED
) -> np.ndarray:
    """``(resamples, images)`` int64: how often each bootstrap resample draws each image
    (``images`` draws with replacement); a pure function of its arguments."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, images, size=(resamples, images))
    weights = np.zeros((resamples, images), dtype=np.int64)
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1)
    return weights


def average_precision(matches: ImageMatches, weights: np.ndarray) -> np.ndarray:
    """COCO's AP (``COCOeval.stats[0]``) over each weighted multiset of the images.

    ``weights (B, N)``: image ``i`` counts ``weights[b, i]`` times in multiset ``b`` (all ones:
    the evaluation itself). Returns ``(B,)``; -1 where no category has ground truth, as
    COCOeval. A detection of an image drawn ``w`` times adds ``w`` to the true or false
    positives at once, which gives COCOeval's precision envelope on the ``w`` copies.
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    total = np.zeros(len(weights))
    counted = np.zeros(len(weights))
    for k in range(len(matches.category_ids)):
        ground_truth = weights @ matches.gt_count[:, k]
        present = ground_truth > 0  # COCOeval leaves out a category without ground truth
        if not present.any():
            continue
        precision = _category_precision(matches, k, weights, np.where(present, ground_truth, 1))
        total += np.where(present, precision.sum(axis=(1, 2)), 0.0)
        counted += np.where(present, precision[0].size, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, total / counted, -1.0)


def _category_precision(
    matches: ImageMatches, k: int, weights: np.ndarray, ground_truth: np.ndarray
) -> np.ndarray:
    """Interpolated precision ``(B, T, R)`` of category ``k`` at the recall thresholds."""
    dets = np.flatnonzero(matches.det_category == k)
    # COCOeval's order: a stable sort by score of the detections in image order.
    dets = dets[np.argsort(-matches.det_score[dets], kind="mergesort")]
    counts = ~matches.ignored[:, dets]
    true_pos = matches.matched[:, dets] & counts
    false_pos = ~matches.matched[:, dets] & counts
    det_weights = weights[:, matches.det_image[dets]]
    thresholds = len(matches.iou_thresholds)
    out = np.zeros((len(weights), thresholds, len(RECALL_THRESHOLDS)))
    if not len(dets):
        return out
    step = max(1, _CHUNK_ELEMENTS // (thresholds * len(dets)))
    for start in range(0, len(weights), step):
        rows = slice(start, start + step)
        w = det_weights[rows][:, None, :]
        out[rows] = _interpolated(
            np.cumsum(w * true_pos, axis=2), np.cumsum(w * false_pos, axis=2), ground_truth[rows]
        )
    return out


def _interpolated(tp: np.ndarray, fp: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    """COCOeval.accumulate's precision at the 101 recall points from the cumulative true and
    false positives ``(B, T, D)``; ``ground_truth (B,)``. Returns ``(B, T, R)``."""
    recall = tp / ground_truth[:, None, None]
    precision = tp / (fp + tp + np.spacing(1))
    # COCOeval's envelope: each precision raised to the best at any higher recall.
    precision = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]
    flat_recall = recall.reshape(-1, recall.shape[2])
    # Row by row: an offset to search all rows at once would round recall onto thresholds.
    found = np.stack([np.searchsorted(r, RECALL_THRESHOLDS, side="left") for r in flat_recall])
    padded = np.concatenate(
        [precision.reshape(flat_recall.shape), np.zeros((len(flat_recall), 1))], axis=1
    )
    return np.take_along_axis(padded, found, axis=1).reshape(*tp.shape[:2], -1)


def resamples_digest(image_ids: np.ndarray, weights: np.ndarray) -> str:
    """SHA-256 (hex) of the image ids and the resample weights: equal digests, paired resamples."""
    digest = hashlib.sha256(np.ascontiguousarray(image_ids, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(weights, dtype=np.int64).tobytes())
    return digest.hexdigest()


def bootstrap_record(matches: ImageMatches, resamples: int = RESAMPLES) -> dict[str, Any]:
    """What a job stores of its image bootstrap (``result["image_bootstrap"]``): the AP of
    each resample (rounded to 1e-6), their standard deviation, and what makes them pairable
    with another job's (``images``, ``resamples``, ``seed``, ``resamples_sha256``)."""
    weights = resample_weights(len(matches.image_ids), resamples)
    values = average_precision(matches, weights)
    return {
        "metric": "AP",
        "images": len(matches.image_ids),
        "resamples": resamples,
        "seed": RESAMPLE_SEED,
        "resamples_sha256": resamples_digest(matches.image_ids, weights),
        "sd": float(values.std(ddof=1)) if resamples > 1 else None,
        "values": [round(float(v), 6) for v in values],
    }


@dataclass(frozen=True)
class ArmImageNoise:
    """One arm's AP image-bootstrap SD, the mean over its seeds with a bootstrap."""

    sd: float | None
    seeds: int


@dataclass(frozen=True)
class DifferenceImageNoise:
    """``arm - reference`` AP: how much of its uncertainty comes from images, and from seeds.

    ``pair_sd``: the image-bootstrap SD of one seed pair's difference (root mean square over
    the pairs); ``mean_sd``: that of the mean difference over the pairs (the same resample in
    every pair); ``seed_sd``: the SD of the pairs' differences over seeds, ``seed_se`` =
    ``seed_sd / sqrt(n)``; ``image_share`` = ``mean_sd² / (mean_sd² + seed_se²)``.
    """

    pairs: int
    pair_sd: float | None
    mean_sd: float | None
    seed_sd: float | None
    seed_se: float | None
    image_share: float | None
    unpaired: dict[int, str]

    @property
    def sentence(self) -> str | None:
        """The image share in words; None when it cannot be computed."""
        if self.image_share is None:
            return None
        return (
            f"of the spread of the difference, about {self.image_share * 100:.0f}% comes from "
            "the choice of validation images"
        )


@dataclass(frozen=True)
class ImageNoise:
    """The image noise of a comparison's AP: per arm, and per non-reference arm's difference."""

    reference: str
    arms: dict[str, ArmImageNoise]
    differences: dict[str, DifferenceImageNoise]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as the comparison summary's ``image_noise``."""
        return {
            "metric": "AP",
            "resamples": RESAMPLES,
            "arms": {arm: {"image_sd": n.sd, "seeds": n.seeds} for arm, n in self.arms.items()},
            "differences": {
                arm: {
                    "pairs": d.pairs,
                    "pair_image_sd": d.pair_sd,
                    "mean_image_sd": d.mean_sd,
                    "seed_sd": d.seed_sd,
                    "seed_se": d.seed_se,
                    "image_share": d.image_share,
                    "sentence": d.sentence,
                    "unpaired": {str(seed): why for seed, why in d.unpaired.items()},
                }
                for arm, d in self.differences.items()
            },
        }

    def lines(self) -> list[str]:
        """``format_table``'s lines, in AP points (x100); none when no job has a bootstrap."""
        if not any(n.seeds for n in self.arms.values()):
            return []
        per_arm = "; ".join(f"{arm} {_points(n.sd)}" for arm, n in self.arms.items())
        said = [
            f"validation-image noise (AP x100, bootstrap over the validation images, "
            f"{RESAMPLES} resamples): per model, mean over seeds: {per_arm}"
        ]
        for arm, d in self.differences.items():
            said.append(
                f"{arm} - {self.reference}: per seed pair {_points(d.pair_sd)} from images, "
                f"{_points(d.seed_sd)} over seeds; mean of {d.pairs} pairs {_points(d.mean_sd)} "
                f"from images, {_points(d.seed_se)} from seeds"
                + ("" if d.sentence is None else f"; {d.sentence}")
            )
            said.extend(f"seed {seed} left out: {why}" for seed, why in d.unpaired.items())
        return ["", *(line for text in said for line in wrap(text))]


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"±{value * 100:.2f}"


def wrap(text: str) -> list[str]:
    """``text`` in lines of the comparison table's width, continued with an indent."""
    return textwrap.wrap(text, TABLE_WIDTH, subsequent_indent="  ", break_on_hyphens=False)


def image_noise(
    per_arm: Mapping[str, Mapping[int, Mapping[str, Any]]],
    reference: str,
    seed_differences: Mapping[str, Mapping[int, float]],
) -> ImageNoise:
    """From each job's ``result`` (``per_arm[arm][seed]``, with its ``image_bootstrap``) and
    each non-reference arm's AP differences by seed (the seed pairs of the summary): per arm
    its mean image SD, per non-reference arm the image and seed parts of its difference."""
    records = {
        arm: {seed: r["image_bootstrap"] for seed, r in seeds.items() if r.get("image_bootstrap")}
        for arm, seeds in per_arm.items()
    }
    differences = {
        arm: _difference_noise(records[arm], records[reference], seed_differences[arm])
        for arm in records
        if arm != reference and arm in seed_differences
    }
    return ImageNoise(reference, {a: _arm_noise(r) for a, r in records.items()}, differences)


def _arm_noise(records: Mapping[int, Mapping[str, Any]]) -> ArmImageNoise:
    sds = [r["sd"] for r in records.values() if r.get("sd") is not None]
    return ArmImageNoise(sd=float(np.mean(sds)) if sds else None, seeds=len(sds))


def _difference_noise(
    arm: Mapping[int, Mapping[str, Any]],
    reference: Mapping[int, Mapping[str, Any]],
    seed_differences: Mapping[int, float],
) -> DifferenceImageNoise:
    """Pairs the seeds of ``seed_differences`` whose two records drew the same resamples."""
    pairs, unpaired = [], {}
    for seed in sorted(seed_differences):
        a, r = arm.get(seed), reference.get(seed)
        if a is None or r is None:
            unpaired[seed] = "no image bootstrap recorded (job trained before it was kept)"
        elif a["resamples_sha256"] != r["resamples_sha256"]:
            unpaired[seed] = "the two jobs were evaluated on different images or resamples"
        else:
            pairs.append(
                np.asarray(a["values"], dtype=float) - np.asarray(r["values"], dtype=float)
            )
    n = len(seed_differences)
    seed_sd = float(np.std(list(seed_differences.values()), ddof=1)) if n >= 2 else None
    seed_se = None if seed_sd is None else seed_sd / math.sqrt(n)
    if not pairs:
        return DifferenceImageNoise(0, None, None, seed_sd, seed_se, None, unpaired)
    stacked = np.stack(pairs)  # (pairs, resamples)
    pair_sd = float(np.sqrt(np.mean(stacked.var(axis=1, ddof=1))))
    mean_sd = float(stacked.mean(axis=0).std(ddof=1))
    share = None
    if seed_se is not None and mean_sd**2 + seed_se**2 > 0 and not unpaired:
        share = mean_sd**2 / (mean_sd**2 + seed_se**2)
    return DifferenceImageNoise(len(pairs), pair_sd, mean_sd, seed_sd, seed_se, share, unpaired)
