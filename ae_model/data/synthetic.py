"""Generated detection datasets for tests, demos and benchmarks; nothing is downloaded.

Two kinds, both written in the COCO detection layout (:mod:`ae_model.data.layout`)::

    out/images/train/000000.png ...      out/annotations/instances_train.json
    out/images/val/000000.png ...        out/annotations/instances_val.json
    out/images/test/000000.png ...       out/annotations/instances_test.json   (if asked for)

- ``digits``: scikit-learn's bundled handwritten digits (1797 real 8x8 scans, 10 classes "0".."9")
  upscaled smoothly, slightly rotated and stretched, coloured, and placed at several scales on
  textured backgrounds (gradients, low-frequency noise, pixel noise, blobs, lines) together with
  distractor strokes that are not digits. Train and val draw from disjoint digit samples, so a
  model cannot score on val by memorising the scans; test draws from val's held-out scans.
- ``shapes``: filled and outlined geometric shapes in random colours on gently shaded backgrounds;
  an easy set for smoke tests and demos.

Every image is rendered from its own generator seeded with ``(seed, split, index)``, so the same
seed gives byte-identical files and changing the number of train (or test) images leaves val
untouched.
Boxes are the exact extent of the pixels an object changed (its alpha mask), objects lie fully
inside the image, and two objects overlap by at most ``max_overlap`` of the smaller box.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from ae_model.data.layout import OPTIONAL_SPLITS, SPLITS, coco_annotation_file, split_folders

DatasetKind = Literal["digits", "shapes"]
DIGIT_NAMES = tuple(str(d) for d in range(10))
SHAPE_NAMES = ("circle", "square", "triangle", "diamond", "cross", "ring")

# Stable integer per split for the per-image seed, so no two splits share a stream.
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
# Every 5th digit scan is held out for val and test (360 of 1797); the rest (1437) go to train.
# Test shares val's scans (not their renders): splitting them would change existing datasets.
_VAL_EVERY = 5
# Luminance gap in [0, 1] between an object's colour and the background under it.
_MIN_CONTRAST = 0.35
# Alpha at an object's edge: high enough that every masked pixel visibly changes.
_EDGE_ALPHA = 0.6
_PLACEMENT_TRIES = 30
# Fast, still lossless; level 6 (PIL's default) costs twice the time for ~10% smaller files.
_PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class SplitInfo:
    """One written split: its image folder, COCO annotation file and counts."""

    images_dir: Path
    annotation_file: Path
    num_images: int
    num_objects: int


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`generate_dataset` wrote; ``class_names[i]`` has COCO category id ``i + 1``."""

    root: Path
    kind: DatasetKind
    class_names: tuple[str, ...]
    splits: dict[str, SplitInfo]


@dataclass(frozen=True)
class RenderedImage:
    """One generated image with its objects.

    ``image`` and ``background`` are ``(size, size, 3)`` uint8 RGB; ``background`` is the image
    before any object was drawn (clutter included), so a caller can see exactly which pixels
    the objects changed. ``boxes`` is ``(n, 4)`` int64 pixel ``x, y, w, h`` (COCO order, tight:
    the last covered column is ``x + w - 1``); ``category_ids`` is ``(n,)`` int64, 1-based.
    """

    image: np.ndarray
    background: np.ndarray
    boxes: np.ndarray
    category_ids: np.ndarray


@dataclass(frozen=True)
class RenderConfig:
    """Difficulty knobs shared by both kinds.

    ``min_scale``/``max_scale``: an object's longer side as a fraction of the image side, drawn
    log-uniformly (defaults give about 12-77 px on 256 px images). ``max_overlap``: the largest
    allowed intersection of two boxes as a fraction of the smaller one. ``clutter``: the most
    distractor strokes per ``digits`` image (0 also turns blobs and lines off).
    """

    size: int = 256
    min_objects: int = 1
    max_objects: int = 6
    min_scale: float = 0.05
    max_scale: float = 0.3
    max_overlap: float = 0.3
    clutter: int = 4

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size must be at least 32 px, got {self.size}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ValueError(
                f"need 0 < min_scale <= max_scale <= 1 (fractions of the image side), "
                f"got {self.min_scale}, {self.max_scale}"
            )
        if self.min_scale * self.size < 6:
            raise ValueError(
                f"min_scale {self.min_scale} gives objects under 6 px on {self.size} px images; "
                "raise min_scale or size"
            )
        if not 0 <= self.max_overlap <= 1:
            raise ValueError(f"max_overlap must be in [0, 1], got {self.max_overlap}")
        if self.clutter < 0:
            raise ValueError(f"clutter must be >= 0, got {self.clutter}")


def generate_dataset(
    kind: DatasetKind,
    out: Path,
    *,
    train: int,
    val: int,
    test: int = 0,
    size: int = 256,
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 6,
    min_scale: float = 0.05,
    max_scale: float = 0.3,
    max_overlap: float = 0.3,
    clutter: int = 4,
    progress: Callable[[int], object] | None = None,
) -> DatasetInfo:
    """Render ``train`` + ``val`` (+ ``test``, written only when > 0) images of ``kind`` into
    ``out`` in COCO layout.

    Knobs are described on :class:`RenderConfig`. ``progress`` is called with 1 after each
    image (``tqdm.update`` fits). Existing files of the same names are overwritten; a folder
    holding other images is refused, so stale images never mix into a split.
    """
    if kind not in ("digits", "shapes"):
        raise ValueError(f"unknown dataset kind {kind!r}; choose 'digits' or 'shapes'")
    if min(train, val, test) < 0:
        raise ValueError(f"image counts must be >= 0, got train={train}, val={val}, test={test}")
    config = RenderConfig(
        size, min_objects, max_objects, min_scale, max_scale, max_overlap, clutter
    )
    names = DIGIT_NAMES if kind == "digits" else SHAPE_NAMES
    out = Path(out)
    splits = {}
    counts = dict(zip(SPLITS + OPTIONAL_SPLITS, (train, val, test), strict=True))
    for split, count in counts.items():
        if split in OPTIONAL_SPLITS and count == 0:
            continue  # an empty folder would read as a split with no images
        splits[split] = _write_split(kind, out, split, count, seed, config, names, progress)
    return DatasetInfo(root=out, kind=kind, class_names=names, splits=splits)


def render_image(
    kind: DatasetKind, seed: int, split: str, index: int, config: RenderConfig
) -> RenderedImage:
    """Render image ``index`` of ``split``; a pure function of its arguments."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {tuple(_SPLIT_CODE)}, got {split!r}")
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    if kind == "digits":
        canvas = _textured_background(rng, config)
    else:
        canvas = _shaded_background(rng, config.size)
    background = canvas.copy()
    boxes: list[tuple[int, int, int, int]] = []
    category_ids: list[int] = []
    for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        side = config.size * math.exp(
            rng.uniform(math.log(config.min_scale), math.log(config.max_scale))
        )
        if kind == "digits":
            category, alpha = _digit_alpha(rng, split, side)
        else:
            category, alpha = _shape_alpha(rng, side)
        box = _place(rng, alpha, np.asarray(boxes, dtype=np.int64).reshape(-1, 4), config)
        if box is None:
            continue
        _composite(canvas, alpha, box, rng)
        boxes.append(box)
        category_ids.append(category)
    return RenderedImage(
        image=canvas,
        background=background,
        boxes=np.asarray(boxes, dtype=np.int64).reshape(-1, 4),
        category_ids=np.asarray(category_ids, dtype=np.int64),
    )


def _write_split(
    kind: DatasetKind,
    out: Path,
    split: str,
    count: int,
    seed: int,
    config: RenderConfig,
    names: tuple[str, ...],
    progress: Callable[[int], object] | None,
) -> SplitInfo:
    images_dir = split_folders(out, split)[0]
    images_dir.mkdir(parents=True, exist_ok=True)
    file_names = [f"{index:06d}.png" for index in range(count)]
    expected = set(file_names)
    strangers = sorted(p.name for p in images_dir.iterdir() if p.name not in expected)
    if strangers:
        raise FileExistsError(
            f"{images_dir} holds files this dataset would not write ({strangers[:3]}...); "
            "generate into an empty folder"
        )
    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for index, file_name in enumerate(file_names):
        rendered = render_image(kind, seed, split, index, config)
        Image.fromarray(rendered.image).save(
            images_dir / file_name, format="PNG", compress_level=_PNG_COMPRESS_LEVEL
        )
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "width": config.size, "height": config.size}
        )
        for (x, y, w, h), category_id in zip(
            rendered.boxes.tolist(), rendered.category_ids.tolist(), strict=True
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        if progress is not None:
            progress(1)
    annotation_file = coco_annotation_file(out, split)
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    coco = {
        "info": {"description": f"aetrain generated '{kind}' dataset, split {split}, seed {seed}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(names)],
    }
    annotation_file.write_text(json.dumps(coco, separators=(",", ":")))
    return SplitInfo(images_dir, annotation_file, count, len(annotations))


# ---------------------------------------------------------------------------------------------
# Backgrounds: float32 work, uint8 result (size, size, 3).


def _textured_background(rng: np.random.Generator, config: RenderConfig) -> np.ndarray:
    size = config.size
    # Built at 1/8 resolution and upscaled once: a smooth base whose finest texture is ~8 px,
    # which is cheap to render and compresses well as PNG (pixel noise would not).
    fine = max(4, size // 8)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-0.5, 0.5, fine, dtype=np.float32)
    t = ramp[None, :] * math.cos(angle) + ramp[:, None] * math.sin(angle) + 0.5
    c0, c1 = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    field = c0 + (c1 - c0) * t[..., None]
    grid = int(rng.integers(2, 7))
    coarse = rng.normal(0, rng.uniform(0.05, 0.2), (3, grid, grid)).astype(np.float32)
    field += np.stack(
        [
            np.asarray(Image.fromarray(c).resize((fine, fine), Image.Resampling.BICUBIC))
            for c in coarse
        ],
        axis=-1,
    )
    field += rng.normal(0, rng.uniform(0, 0.08), field.shape).astype(np.float32)
    pil = Image.fromarray(_to_uint8(field)).resize((size, size), Image.Resampling.BICUBIC)
    if config.clutter:
        draw = ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(0, 4))):
            cx, cy = rng.uniform(0, size, 2)
            rx, ry = rng.uniform(0.05, 0.25, 2) * size
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=_random_rgb(rng))
        for _ in range(int(rng.integers(0, 4))):
            x0, y0, x1, y1 = rng.uniform(0, size, 4)
            draw.line((x0, y0, x1, y1), fill=_random_rgb(rng), width=int(rng.integers(1, 3)))
        for _ in range(int(rng.integers(0, config.clutter + 1))):
            _distractor_stroke(draw, rng, config)
    return np.array(pil)


def _distractor_stroke(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, config: RenderConfig
) -> None:
    """A digit-sized, digit-thick curve (arc or zigzag) that is not a digit."""
    side = config.size * rng.uniform(config.min_scale, config.max_scale)
    x, y = rng.uniform(0, config.size - side, 2)
    width = max(1, int(side * rng.uniform(0.08, 0.16)))
    if rng.random() < 0.5:
        start = rng.uniform(0, 360)
        draw.arc(
            (x, y, x + side, y + side),
            start,
            start + rng.uniform(60, 200),
            fill=_random_rgb(rng),
            width=width,
        )
    else:
        points = rng.uniform(0, side, (int(rng.integers(2, 4)), 2)) + np.array([x, y])
        draw.line([tuple(p) for p in points.tolist()], fill=_random_rgb(rng), width=width)


def _shaded_background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(0.1, 0.9, 3).astype(np.float32)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    shade = ramp[None, :] * rng.uniform(-0.2, 0.2) + ramp[:, None] * rng.uniform(-0.2, 0.2)
    return _to_uint8(base + shade[..., None])


# ---------------------------------------------------------------------------------------------
# Objects: an alpha patch (h, w) float32 in {0} U [_EDGE_ALPHA, 1], tight to its nonzero pixels.


@lru_cache(maxsize=1)
def _digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits as ``(1797, 8, 8)`` float32 in [0, 1] and labels ``(1797,)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def _digit_alpha(rng: np.random.Generator, split: str, side: float) -> tuple[int, np.ndarray]:
    scans, labels = _digit_scans()
    held_out = np.arange(len(scans)) % _VAL_EVERY == 0
    pool = np.flatnonzero(~held_out if split == "train" else held_out)
    sample = int(pool[rng.integers(len(pool))])
    scan = scans[sample]
    rows = np.flatnonzero(scan.max(axis=1) > 0.2)
    cols = np.flatnonzero(scan.max(axis=0) > 0.2)
    # A zero border keeps the upscaled stroke from touching the patch edge before rotation.
    cell = np.pad(scan[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
    aspect = rng.uniform(0.8, 1.25)
    px_per_cell = side / max(len(rows), len(cols) * aspect)
    height = max(4, round(cell.shape[0] * px_per_cell))
    width = max(4, round(cell.shape[1] * px_per_cell * aspect))
    upscaled = Image.fromarray(cell).resize((width, height), Image.Resampling.BICUBIC)
    intensity = np.asarray(
        upscaled.rotate(rng.uniform(-15, 15), Image.Resampling.BICUBIC, expand=True)
    )
    # Relative to the peak, which tiny digits lose to resampling, so every digit keeps strokes;
    # the level sets the stroke thickness, thin pen to thick marker.
    intensity = intensity / intensity.max()
    threshold = rng.uniform(0.25, 0.5)
    alpha = np.where(intensity > threshold, _EDGE_ALPHA + (1 - _EDGE_ALPHA) * intensity, 0)
    return int(labels[sample]) + 1, _crop_to_mask(alpha.astype(np.float32))


def _shape_alpha(rng: np.random.Generator, side: float) -> tuple[int, np.ndarray]:
    category = int(rng.integers(len(SHAPE_NAMES))) + 1
    name = SHAPE_NAMES[category - 1]
    s = max(6, round(side))
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    e = s - 1
    bar = max(2, s // 3)
    if name == "circle":
        draw.ellipse((0, 0, e, e), fill=255)
    elif name == "square":
        draw.rectangle((0, 0, e, e), fill=255)
    elif name == "triangle":
        draw.polygon([(e / 2, 0), (e, e), (0, e)], fill=255)
    elif name == "diamond":
        draw.polygon([(e / 2, 0), (e, e / 2), (e / 2, e), (0, e / 2)], fill=255)
    elif name == "cross":
        lo = (s - bar) // 2
        draw.rectangle((lo, 0, lo + bar - 1, e), fill=255)
        draw.rectangle((0, lo, e, lo + bar - 1), fill=255)
    else:
        draw.ellipse((0, 0, e, e), outline=255, width=max(2, s // 6))
    return category, _crop_to_mask(np.asarray(mask, dtype=np.float32) / 255.0)


def _crop_to_mask(alpha: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(alpha.max(axis=1) > 0)
    cols = np.flatnonzero(alpha.max(axis=0) > 0)
    return alpha[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _place(
    rng: np.random.Generator, alpha: np.ndarray, placed: np.ndarray, config: RenderConfig
) -> tuple[int, int, int, int] | None:
    """A random ``x, y, w, h`` inside the image overlapping ``placed (n, 4)`` little enough."""
    h, w = alpha.shape
    if w > config.size or h > config.size:
        return None
    area = w * h
    for _ in range(_PLACEMENT_TRIES):
        x = int(rng.integers(0, config.size - w + 1))
        y = int(rng.integers(0, config.size - h + 1))
        ix = np.minimum(placed[:, 0] + placed[:, 2], x + w) - np.maximum(placed[:, 0], x)
        iy = np.minimum(placed[:, 1] + placed[:, 3], y + h) - np.maximum(placed[:, 1], y)
        inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
        smaller = np.minimum(placed[:, 2] * placed[:, 3], area)
        if np.all(inter <= config.max_overlap * smaller):
            return x, y, w, h
    return None


def _composite(
    canvas: np.ndarray, alpha: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator
) -> None:
    """Blend a contrasting colour into ``canvas`` (in place) through ``alpha`` at ``box``."""
    x, y, w, h = box
    region = canvas[y : y + h, x : x + w].astype(np.float32) / 255.0
    colour = _contrasting_colour(rng, _luminance(region.reshape(-1, 3).mean(axis=0)))
    a = alpha[..., None]
    canvas[y : y + h, x : x + w] = _to_uint8(region * (1 - a) + colour * a)


def _contrasting_colour(rng: np.random.Generator, background: float) -> np.ndarray:
    """A random hue whose luminance is at least ``_MIN_CONTRAST`` away from ``background``."""
    if background > 0.5:
        target = rng.uniform(0, background - _MIN_CONTRAST)
    else:
        target = rng.uniform(background + _MIN_CONTRAST, 1)
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    lum = max(_luminance(colour), 1e-3)
    # Scaling towards black or towards white moves luminance linearly onto the target.
    if target <= lum:
        return colour * (target / lum)
    return 1 - (1 - colour) * ((1 - target) / max(1 - lum, 1e-3))


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def _random_rgb(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = rng.integers(0, 256, 3).tolist()
    return r, g, b


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
