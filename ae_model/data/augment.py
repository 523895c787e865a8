"""darknet-style training augmentation and the letterbox of evaluation inputs.

Augmentation follows darknet's keys (:class:`AugmentParams`): ``jitter`` crop/pad, ``flip``,
``hue``/``saturation``/``exposure``, ``mosaic``; every draw comes from the generator the caller
passes (the loader seeds one per sample with ``(seed, position of the sample in the training
stream)``). Images are ``(H, W, 3)`` uint8 RGB, boxes pixel ``x1, y1, x2, y2``.

Torch-free on purpose (numpy and PIL): job settings are resolved and checked with
:class:`AugmentParams` where torch is not imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

    from ae_model.data.datasets import Sample

# Darknet fills padding with 0.5 grey.
PAD_VALUE = 128
# Boxes narrower or shorter than this (pixels of the network input) after augmentation are dropped.
MIN_BOX_SIDE = 2.0

BoxArray = TypeVar("BoxArray", np.ndarray, "torch.Tensor")


@dataclass(frozen=True)
class AugmentParams:
    """Training augmentation; the defaults change nothing but the resize.

    - ``jitter``: darknet's ``[yolo] jitter``: each side of the crop window moves by
      ``U(-jitter, jitter)`` times the image width (left/right) or height (top/bottom), inwards
      for positive draws (cropping), outwards for negative ones (grey padding). The window is
      then resized to the network input.
    - ``hue``: shift of the hue circle by ``U(-hue, hue)`` turns.
    - ``saturation``, ``exposure``: S and V multiplied by darknet's ``rand_scale``: ``u`` from
      ``U(1, s)``, then ``u`` or ``1/u`` with equal odds.
    - ``flip``: mirror left-right with probability 1/2.
    - ``letterbox``: keep the aspect ratio of the crop window and pad with grey (True), or
      stretch it to the network input as darknet does without ``letter_box=1`` (False).
    - ``mosaic``: darknet's ``mosaic=1``: each training input tiles four augmented samples
      around a random centre (:func:`mosaic`).
    """

    jitter: float = 0.0
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    flip: bool = False
    letterbox: bool = True
    mosaic: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.jitter < 0.5:
            raise ValueError(f"jitter must be in [0, 0.5), got {self.jitter}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(
                f"hue must be in [0, 0.5] (a fraction of the hue circle), got {self.hue}"
            )
        if self.saturation < 1 or self.exposure < 1:
            raise ValueError(
                f"saturation and exposure are scale limits >= 1 (1 = off), "
                f"got {self.saturation}, {self.exposure}"
            )

    @classmethod
    def from_darknet(cls, options: Mapping[str, object]) -> AugmentParams:
        """From darknet keys (``jitter``, ``hue``, ``saturation``, ``exposure``, ``flip``,
        ``letter_box``, ``mosaic``) as raw cfg strings or numbers; missing keys take darknet's
        defaults."""

        def get(key: str, default: float) -> float:
            return float(str(options.get(key, default)))

        return cls(
            jitter=get("jitter", 0.2),
            hue=get("hue", 0.0),
            saturation=get("saturation", 1.0),
            exposure=get("exposure", 1.0),
            flip=bool(get("flip", 1)),
            letterbox=bool(get("letter_box", 0)),
            mosaic=bool(get("mosaic", 0)),
        )


@dataclass(frozen=True)
class LetterboxMeta:
    """How an evaluation image was letterboxed: ``input = original * scale + pad``."""

    image_id: int
    width: int
    height: int
    scale: float
    pad_x: float
    pad_y: float


def letterbox(
    image: np.ndarray, width: int, height: int, image_id: int = 0
) -> tuple[np.ndarray, LetterboxMeta]:
    """Resize ``image`` ``(h, w, 3)`` uint8 into ``(height, width, 3)``, aspect kept, centred on
    grey; the meta maps network-input coordinates back with :func:`unletterbox_boxes`."""
    h, w = image.shape[:2]
    out, scale, shift, _ = _warp(
        image, (0.0, 0.0, float(w), float(h)), width, height, keep_aspect=True
    )
    meta = LetterboxMeta(image_id, w, h, float(scale[0]), float(shift[0]), float(shift[1]))
    return out, meta


def unletterbox_boxes(boxes: BoxArray, meta: LetterboxMeta) -> BoxArray:
    """Boxes ``(N, 4)`` pixel ``x1, y1, x2, y2`` in the letterboxed input -> the original image,
    clipped to it. Works on numpy arrays and torch tensors alike."""
    shift = [meta.pad_x, meta.pad_y, meta.pad_x, meta.pad_y]
    limit = [meta.width, meta.height, meta.width, meta.height]
    if isinstance(boxes, np.ndarray):
        return np.clip((boxes - np.asarray(shift)) / meta.scale, 0, limit).astype(boxes.dtype)
    original = (boxes - boxes.new_tensor(shift)) / meta.scale
    return original.clamp(min=0).minimum(original.new_tensor(limit))


def augment(
    sample: Sample, width: int, height: int, params: AugmentParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jitter, resize to ``(height, width)``, flip and HSV-jitter one sample.

    Returns the image ``(height, width, 3)`` uint8, boxes ``(n, 4)`` float32 pixel x1y1x2y2 in
    it (clipped; those under ``MIN_BOX_SIDE`` dropped) and their classes ``(n,)``. All ten
    random numbers are drawn whatever the params, so turning one augmentation off leaves the
    draws of the others unchanged.
    """
    u = rng.random(10)
    h, w = sample.image.shape[:2]
    dw, dh = params.jitter * w, params.jitter * h
    left, right, top, bottom = (2 * u[:4] - 1) * (dw, dw, dh, dh)
    crop = (left, top, w - right, h - bottom)
    image, scale, shift, content = _warp(
        sample.image, crop, width, height, keep_aspect=params.letterbox
    )
    # Clip to the pixels that hold image content: jitter can crop a box away into the padding.
    boxes = sample.boxes * np.tile(scale, 2) + np.tile(shift, 2)
    boxes = np.clip(boxes, np.tile(content[:2], 2), np.tile(content[2:], 2))
    if params.flip and u[4] < 0.5:
        image = np.ascontiguousarray(image[:, ::-1])
        boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    dhue = (2 * u[5] - 1) * params.hue
    dsat = rand_scale(params.saturation, u[6], u[7])
    dexp = rand_scale(params.exposure, u[8], u[9])
    if (dhue, dsat, dexp) != (0, 1, 1):
        image = _hsv_jitter(image, dhue, dsat, dexp)
    return (image, *_large_enough(boxes, sample.classes))


def _large_enough(boxes: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The boxes (as float32) and classes whose sides are both at least ``MIN_BOX_SIDE``."""
    boxes = boxes.astype(np.float32)
    keep = (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIDE) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIDE)
    return boxes[keep], classes[keep]


MOSAIC_CENTRE = (0.2, 0.8)
"""Where the mosaic's centre falls, as a fraction of the input's width and height (darknet's
``min_offset = 0.2``)."""


def mosaic(
    samples: Sequence[Sample],
    width: int,
    height: int,
    params: AugmentParams,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """darknet's ``mosaic=1``: four samples, each augmented to the full input, tiled into one.

    A centre ``(cx, cy)`` drawn uniformly in the middle 60% of the input splits it into four
    rectangles, top-left, top-right, bottom-left, bottom-right, filled in that order by the
    four samples. Each rectangle shows a window of its sample's augmented input (same size,
    at a uniformly drawn position), so objects keep their scale. Boxes are shifted with the
    window and clipped to the rectangle; those under ``MIN_BOX_SIDE`` are dropped.

    Returns what :func:`augment` returns: the image ``(height, width, 3)`` uint8, boxes
    ``(n, 4)`` float32 pixel x1y1x2y2 and classes ``(n,)``.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic tiles 4 samples, got {len(samples)}")
    low, high = MOSAIC_CENTRE
    cx = int(rng.uniform(low * width, high * width))
    cy = int(rng.uniform(low * height, high * height))
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    all_boxes, all_classes = [], []
    tiles = [(0, 0, cx, cy), (cx, 0, width, cy), (0, cy, cx, height), (cx, cy, width, height)]
    for sample, (x1, y1, x2, y2) in zip(samples, tiles, strict=True):
        image, boxes, classes = augment(sample, width, height, params, rng)
        tw, th = x2 - x1, y2 - y1
        sx, sy = int(rng.integers(0, width - tw + 1)), int(rng.integers(0, height - th + 1))
        canvas[y1:y2, x1:x2] = image[sy : sy + th, sx : sx + tw]
        moved = boxes + np.array([x1 - sx, y1 - sy] * 2, dtype=np.float32)
        all_boxes.append(np.clip(moved, [x1, y1, x1, y1], [x2, y2, x2, y2]))
        all_classes.append(classes)
    return (canvas, *_large_enough(np.concatenate(all_boxes), np.concatenate(all_classes)))


def rand_scale(limit: float, magnitude: float, coin: float) -> float:
    """darknet's ``rand_scale(limit)`` from two uniform draws: ``u ~ U(1, limit)``, u or 1/u."""
    scale = 1 + (limit - 1) * magnitude
    return scale if coin < 0.5 else 1 / scale


def _warp(
    image: np.ndarray,
    crop: tuple[float, float, float, float],
    width: int,
    height: int,
    *,
    keep_aspect: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Resize the window ``crop`` (x1, y1, x2, y2; may reach outside ``image``) into a grey
    ``(height, width, 3)`` canvas, centred if ``keep_aspect``.

    Returns the canvas, the map from source to canvas pixels ``out = src * scale + shift``
    (``scale`` and ``shift`` of shape ``(2,)``, x then y) and ``content`` ``(4,)``, the canvas
    rectangle x1, y1, x2, y2 that holds image pixels. The part of the window inside the
    image is resampled with PIL's antialiased bilinear filter over exactly the source region
    that lands on whole canvas pixels, so the map holds to sub-pixel accuracy.
    """
    x1, y1, x2, y2 = crop
    scale = np.array([width / (x2 - x1), height / (y2 - y1)])
    if keep_aspect:
        scale[:] = scale.min()
    shift = (np.array([width, height]) - (x2 - x1, y2 - y1) * scale) / 2 - (x1, y1) * scale
    h, w = image.shape[:2]
    visible = np.array([max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)])
    # Whole canvas pixels covered by the visible window; 1e-6 absorbs float error at exact edges.
    lo = np.ceil(visible[:2] * scale + shift - 1e-6).clip(0, (width, height)).astype(int)
    hi = np.floor(visible[2:] * scale + shift + 1e-6).clip(0, (width, height)).astype(int)
    canvas = np.full((height, width, 3), PAD_VALUE, dtype=np.uint8)
    if np.all(hi > lo):
        source = np.concatenate([(lo - shift) / scale, (hi - shift) / scale]).clip(0, [w, h, w, h])
        resized = Image.fromarray(image).resize(
            (int(hi[0] - lo[0]), int(hi[1] - lo[1])),
            Image.Resampling.BILINEAR,
            box=tuple(source.tolist()),
        )
        canvas[lo[1] : hi[1], lo[0] : hi[0]] = np.asarray(resized)
    return canvas, scale, shift, np.concatenate([lo, hi])


def _hsv_jitter(image: np.ndarray, dhue: float, dsat: float, dexp: float) -> np.ndarray:
    """Shift hue by ``dhue`` turns, scale saturation by ``dsat`` and value by ``dexp``.

    Each HSV channel changes as a function of itself alone, so one 256-entry lookup table per
    channel (applied by PIL in C) does the work of float HSV maths at a fraction of the cost.
    """
    levels = np.arange(256)
    luts = np.concatenate(
        [
            (levels + round(dhue * 256)) % 256,
            np.clip(np.round(levels * dsat), 0, 255),
            np.clip(np.round(levels * dexp), 0, 255),
        ]
    )
    hsv = Image.fromarray(image).convert("HSV")
    return np.asarray(hsv.point(luts.astype(int).tolist()).convert("RGB"))
