"""Detection data for training and evaluation: datasets, darknet-style augmentation, loaders.

- Datasets (:class:`CocoDetection`, :class:`YoloDataset`) return a :class:`Sample`: the image as
  ``(H, W, 3)`` uint8 RGB and its boxes in pixel ``x1, y1, x2, y2`` with class indices
  ``0..C-1``; ``dataset.category_ids[c]`` is the COCO category id of class ``c``.
- Augmentation follows darknet's keys (:class:`AugmentParams`): ``jitter`` crop/pad, ``flip``,
  ``hue``/``saturation``/``exposure``; every draw of a sample comes from a generator seeded with
  ``(seed, position of the sample in the training stream)``.
- :func:`build_loader` yields batches in the contract of ``docs/contracts.md``: images float
  ``(B, 3, H, W)`` in [0, 1] and targets ``(N, 6)`` = ``batch_index, class_id, x1, y1, x2, y2``
  normalised to the input as fed. Training is an endless (or ``iterations``-long) stream of
  batches, deterministic given the seed whatever the number of workers, that can start at any
  iteration without loading the batches it skips; multi-scale follows darknet's ``random=1``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset, Sampler

from ae_model.cfg import SIZE_STEP, darknet_side, largest_multiscale_size, multiscale_coef
from ae_model.dataset_check import label_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Darknet fills padding with 0.5 grey.
PAD_VALUE = 128
# darknet resizes the network every 10 iterations when random=1.
MULTISCALE_EVERY = 10
# Boxes narrower or shorter than this (pixels of the network input) after augmentation are dropped.
MIN_BOX_SIDE = 2.0
# darknet keeps the largest size for the last 100 iterations (its rolling BN statistics).
_MULTISCALE_TAIL = 100

# Independent random streams derived from the one user seed.
_ORDER_STREAM = 0
_AUGMENT_STREAM = 1
_SIZE_STREAM = 2

BoxArray = TypeVar("BoxArray", np.ndarray, torch.Tensor)


class Sample(NamedTuple):
    """One annotated image.

    ``image`` ``(H, W, 3)`` uint8 RGB; ``boxes`` ``(n, 4)`` float32 pixel ``x1, y1, x2, y2``;
    ``classes`` ``(n,)`` int64 in ``0..C-1``; ``image_id`` the COCO image id.
    """

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    image_id: int


class SampleSource(Protocol):
    """Anything loaders can draw samples from: a dataset or a ``Subset`` of one."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


class DetectionDataset(Dataset[Sample]):
    """Base of the detection datasets: ``len``, ``dataset[i] -> Sample`` and class metadata."""

    class_names: tuple[str, ...]
    # COCO category id of each class index, for writing detections back in COCO terms.
    category_ids: tuple[int, ...]

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def coco_ground_truth(self) -> COCO:
        """The annotations as a pycocotools ``COCO`` index, image ids as in :class:`Sample`."""
        raise NotImplementedError


class CocoDetection(DetectionDataset):
    """COCO detection JSON plus its image folder, indexed by pycocotools.

    Category ids map to class indices in sorted id order; crowd annotations and boxes with no
    area inside the image are left out; images without annotations stay (as negatives).
    """

    def __init__(self, annotation_file: Path | str, image_dir: Path | str) -> None:
        self.image_dir = Path(image_dir)
        # pycocotools prints progress to stdout; keep the caller's output clean.
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(annotation_file))
        self.category_ids = tuple(sorted(self.coco.getCatIds()))
        self.class_names = tuple(str(self.coco.cats[c]["name"]) for c in self.category_ids)
        self.image_ids = tuple(sorted(self.coco.getImgIds()))
        self._boxes, self._classes = self._index_annotations(Path(annotation_file))

    def _index_annotations(self, source: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per image: boxes ``(n, 4)`` float32 x1y1x2y2 clipped to the image, classes ``(n,)``."""
        anns = [a for a in self.coco.dataset.get("annotations", []) if not a.get("iscrowd", 0)]
        row_of_image = {image_id: row for row, image_id in enumerate(self.image_ids)}
        class_of_category = {c: i for i, c in enumerate(self.category_ids)}
        for a in anns:
            if a["image_id"] not in row_of_image or a["category_id"] not in class_of_category:
                raise ValueError(
                    f"{source}: annotation {a.get('id')} names image {a['image_id']} or "
                    f"category {a['category_id']}, which the file does not list"
                )
        rows = np.array([row_of_image[a["image_id"]] for a in anns], dtype=np.int64)
        classes = np.array([class_of_category[a["category_id"]] for a in anns], dtype=np.int64)
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        sizes = np.array(
            [[self.coco.imgs[i]["width"], self.coco.imgs[i]["height"]] for i in self.image_ids],
            dtype=np.float32,
        ).reshape(-1, 2)
        limit = np.tile(sizes[rows], 2)
        boxes = np.clip(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), 0, limit)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        rows, classes, boxes = rows[keep], classes[keep], boxes[keep]
        order = np.argsort(rows, kind="stable")
        splits = np.searchsorted(rows[order], np.arange(1, len(self.image_ids)))
        return np.split(boxes[order], splits), np.split(classes[order], splits)

    def __len__(self) -> int:
        return len(self.image_ids)

    def coco_ground_truth(self) -> COCO:
        return self.coco

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        image = read_image(self.image_dir / self.coco.imgs[image_id]["file_name"])
        return Sample(image, self._boxes[index], self._classes[index], image_id)


class YoloDataset(DetectionDataset):
    """A darknet (YOLO txt) dataset: images with ``labels/*.txt`` lines ``class cx cy w h``.

    ``source`` is a folder (images under ``source/images`` if that exists, else anywhere under
    ``source``) or a darknet list file (``train.txt``: one image path per line, relative paths
    resolved against the list's folder or, failing that, its nearest ancestor where they exist,
    as darknet resolves them against its working directory). An image's label file is darknet's:
    the path with its last ``images``/``JPEGImages`` folder replaced by ``labels`` and the
    suffix by ``.txt``, else the ``.txt`` beside the image; no label file means no objects.
    ``names``: class names, a ``.names`` file, or None to use the one ``*.names`` (or
    ``classes.txt``) beside the source, else ``"0".."K"`` up to the largest class id seen.
    Image ids are ``index + 1``, category ids ``class + 1`` (as :meth:`to_coco` writes them).
    """

    def __init__(self, source: Path | str, names: Sequence[str] | Path | str | None = None) -> None:
        source = Path(source)
        self.image_paths = _list_images(source)
        if not self.image_paths:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {source}")
        self._labels = [_read_yolo_labels(label_path(p)) for p in self.image_paths]
        largest = max((int(lab[:, 0].max()) for lab in self._labels if len(lab)), default=-1)
        self.class_names = _resolve_names(source, names, largest)
        if largest >= len(self.class_names):
            raise ValueError(
                f"class id {largest} in the labels of {source} but only "
                f"{len(self.class_names)} class names; add names or fix the labels"
            )
        self.category_ids = tuple(range(1, len(self.class_names) + 1))

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> Sample:
        image = read_image(self.image_paths[index])
        height, width = image.shape[:2]
        boxes, classes = _yolo_to_pixels(self._labels[index], width, height)
        return Sample(image, boxes, classes, index + 1)

    def to_coco(self) -> dict[str, Any]:
        """The dataset as a COCO detection dict (ground truth for COCOeval); reads image sizes."""
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for index, (path, labels) in enumerate(zip(self.image_paths, self._labels, strict=True)):
            with Image.open(path) as im:
                width, height = im.size
            images.append(
                {"id": index + 1, "file_name": str(path), "width": width, "height": height}
            )
            boxes, classes = _yolo_to_pixels(labels, width, height)
            for cls, (x, y, x2, y2) in zip(classes.tolist(), boxes.tolist(), strict=True):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": index + 1,
                        "category_id": cls + 1,
                        "bbox": [x, y, x2 - x, y2 - y],
                        "area": (x2 - x) * (y2 - y),
                        "iscrowd": 0,
                    }
                )
        categories = [
            {"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names, strict=True)
        ]
        return {"images": images, "annotations": annotations, "categories": categories}

    def coco_ground_truth(self) -> COCO:
        coco = COCO()
        coco.dataset = self.to_coco()
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco


def open_dataset(root: Path | str, split: str) -> DetectionDataset:
    """The ``split`` (e.g. ``"train"``, ``"val"``) of the dataset at ``root``.

    Layouts, tried in this order: COCO ``annotations/instances_{split}.json`` with images in
    ``images/{split}/`` or ``{split}/``; a darknet list ``{split}.txt``; a YOLO folder
    ``images/{split}/`` (labels in ``labels/{split}/``) or ``{split}/``. YOLO class names come
    from the one ``*.names`` (or ``classes.txt``) file in ``root`` if there is one.
    """
    root = Path(root)
    annotation_file = root / "annotations" / f"instances_{split}.json"
    folders = [root / "images" / split, root / split]
    if annotation_file.is_file():
        image_dir = next((f for f in folders if f.is_dir()), None)
        if image_dir is None:
            raise FileNotFoundError(
                f"{annotation_file} found but no image folder {folders[0]} or {folders[1]}"
            )
        return CocoDetection(annotation_file, image_dir)
    names = _names_file(root)
    if (root / f"{split}.txt").is_file():
        return YoloDataset(root / f"{split}.txt", names)
    for folder in folders:
        if folder.is_dir():
            return YoloDataset(folder, names)
    raise FileNotFoundError(
        f"no '{split}' split in {root}: expected {annotation_file} (COCO), "
        f"{root / f'{split}.txt'} (darknet list) or a folder {folders[0]} or {folders[1]} (YOLO)"
    )


def read_image(path: Path) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB (grey, palette and alpha images converted)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _list_images(source: Path) -> list[Path]:
    if source.is_file():
        entries = [line.strip() for line in source.read_text().splitlines() if line.strip()]
        if not entries:
            return []
        first = Path(entries[0])
        bases = [source.parent, *source.parent.parents]
        base = next((b for b in bases if (b / first).is_file()), None)
        if base is None:
            raise FileNotFoundError(
                f"{first} listed in {source} exists neither beside the list nor in a folder above"
            )
        return [base / e for e in entries]
    root = source / "images" if (source / "images").is_dir() else source
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_yolo_labels(path: Path) -> np.ndarray:
    """A label file as ``(n, 5)`` float32 ``class, cx, cy, w, h``; empty if there is none."""
    if not path.is_file():
        return np.zeros((0, 5), dtype=np.float32)
    text = path.read_text()
    lines = sum(1 for line in text.splitlines() if line.strip())
    try:
        values = np.array(text.split(), dtype=np.float32)
    except ValueError as error:
        raise ValueError(f"{path}: labels must be numbers 'class cx cy w h' ({error})") from None
    if values.size != 5 * lines:
        raise ValueError(f"{path}: each line must hold 5 numbers 'class cx cy w h'")
    labels = values.reshape(-1, 5)
    classes = labels[:, 0]
    if np.any(classes < 0) or np.any(classes != np.round(classes)):
        raise ValueError(f"{path}: class ids must be integers >= 0")
    return labels


def _yolo_to_pixels(labels: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(n, 5)`` -> boxes ``(m, 4)`` float32 pixel x1y1x2y2 clipped to the image and
    classes ``(m,)`` int64, leaving out boxes with no area inside the image."""
    cxcy, wh = labels[:, 1:3], labels[:, 3:5]
    corners = np.clip(np.concatenate([cxcy - wh / 2, cxcy + wh / 2], axis=1), 0, 1)
    boxes = corners * np.array([width, height, width, height], dtype=np.float32)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], labels[keep, 0].astype(np.int64)


def _resolve_names(
    source: Path, names: Sequence[str] | Path | str | None, largest: int
) -> tuple[str, ...]:
    if isinstance(names, (str, Path)):
        return tuple(line.strip() for line in Path(names).read_text().splitlines() if line.strip())
    if names is not None:
        return tuple(names)
    names_file = _names_file(source.parent if source.is_file() else source)
    if names_file is not None:
        return _resolve_names(source, names_file, largest)
    return tuple(str(c) for c in range(largest + 1))


def _names_file(folder: Path) -> Path | None:
    """The one ``*.names`` file in ``folder``, else its ``classes.txt``, else None."""
    candidates = sorted(folder.glob("*.names")) or sorted(folder.glob("classes.txt"))
    return candidates[0] if len(candidates) == 1 else None


# ---------------------------------------------------------------------------------------------
# Transforms


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
    if isinstance(boxes, torch.Tensor):
        original = (boxes - boxes.new_tensor(shift)) / meta.scale
        return torch.minimum(original.clamp(min=0), original.new_tensor(limit))
    return np.clip((boxes - np.asarray(shift)) / meta.scale, 0, limit).astype(boxes.dtype)


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
    dsat = _rand_scale(params.saturation, u[6], u[7])
    dexp = _rand_scale(params.exposure, u[8], u[9])
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


def _rand_scale(limit: float, magnitude: float, coin: float) -> float:
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


# ---------------------------------------------------------------------------------------------
# Multi-scale and batching


def multiscale_size(
    seed: int,
    iteration: int,
    base: tuple[int, int],
    random: float,
    max_iterations: int | None = None,
) -> tuple[int, int]:
    """Network input ``(width, height)`` for ``iteration`` under darknet's ``random`` key.

    darknet (AlexeyAB ``detector.c``) every 10 iterations: ``coef = 1.4`` if ``random == 1``
    else ``random``; ``r = rand_scale(coef)`` (``u ~ U(1, coef)``, u or 1/u); each side
    ``round(r * base / 32 + 1) * 32``; if ``r < 1`` and that exceeds the base, the base; at
    least 32. The largest size ``round(coef * base / 32 + 1) * 32`` is used for the first block
    (so running out of memory shows at once) and for blocks starting after ``max_iterations -
    100``. Here ``r`` is drawn from ``(seed, iteration // 10)``, so the size is a pure function
    of its arguments and a resumed run sees the same sizes. ``random == 0``: the base, always.
    """
    if random == 0:
        return base
    if random < 1:
        raise ValueError(f"random (multi-scale) must be 0, 1, or a scale limit > 1, got {random}")
    block = iteration // MULTISCALE_EVERY
    start = block * MULTISCALE_EVERY
    if block == 0 or (max_iterations is not None and start > max_iterations - _MULTISCALE_TAIL):
        return largest_multiscale_size(base, random)
    coef = multiscale_coef(random)
    magnitude, coin = np.random.default_rng([seed, _SIZE_STREAM, block]).random(2)
    r = _rand_scale(coef, magnitude, coin)
    sides = tuple(darknet_side(r, side) for side in base)
    if r < 1 and (sides[0] > base[0] or sides[1] > base[1]):
        return base
    return max(sides[0], SIZE_STEP), max(sides[1], SIZE_STEP)


class SampleRequest(NamedTuple):
    """What a batch sampler asks of the dataset view for one slot of a batch."""

    sample_index: int  # index into the dataset
    position: int  # position in the stream of samples; seeds the sample's augmentation
    width: int
    height: int


class IterationBatchSampler(Sampler[list[SampleRequest]]):
    """Training batches by optimizer iteration, ``subdivisions`` micro-batches per iteration.

    Micro-batch ``m`` (iteration ``m // subdivisions``) holds stream positions
    ``m*B .. m*B+B-1`` (``B = batch_size``, the micro-batch size). Position ``p`` is sample
    ``perm_e[p % n]`` of epoch ``e = p // n``, ``perm_e`` a permutation drawn from
    ``(seed, e)``; batches run across epoch ends as darknet's do. Every micro-batch of
    iteration ``t`` has the input size :func:`multiscale_size` of ``(seed, t)``. Starting at
    ``start_iteration`` costs one permutation; ``iterations`` (absolute, exclusive) ends the
    stream, None never does. With ``world_size`` > 1 (data-parallel training) it yields only
    the micro-batches of process ``rank``: micro-batch ``j`` of each iteration goes to process
    ``j % world_size``, so the processes together see exactly the one-process stream.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int,
        size: tuple[int, int],
        multiscale: float = 0.0,
        subdivisions: int = 1,
        start_iteration: int = 0,
        iterations: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < 1:
            raise ValueError("the training dataset is empty")
        if batch_size < 1 or subdivisions < 1:
            raise ValueError(
                f"batch_size and subdivisions must be >= 1, got {batch_size}, {subdivisions}"
            )
        if world_size < 1 or subdivisions % world_size or not 0 <= rank < world_size:
            raise ValueError(
                f"subdivisions={subdivisions} must be a multiple of world_size={world_size}, "
                f"and rank={rank} in 0..{world_size - 1}"
            )
        if start_iteration < 0:
            raise ValueError(f"start_iteration must be >= 0, got {start_iteration}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.size = size
        self.multiscale = multiscale
        self.subdivisions = subdivisions
        self.start_iteration = start_iteration
        self.iterations = iterations
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        if self.iterations is None:
            raise TypeError("an endless training loader has no length; pass iterations")
        per_process = self.subdivisions // self.world_size
        return max(0, self.iterations - self.start_iteration) * per_process

    def __iter__(self) -> Iterator[list[SampleRequest]]:
        epoch, order = -1, np.zeros(0, dtype=np.int64)
        start, stop = self.start_iteration, self.iterations
        for iteration in count(start) if stop is None else range(start, stop):
            width, height = multiscale_size(
                self.seed, iteration, self.size, self.multiscale, self.iterations
            )
            first = iteration * self.subdivisions + self.rank
            for micro in range(first, (iteration + 1) * self.subdivisions, self.world_size):
                batch = []
                for position in range(micro * self.batch_size, (micro + 1) * self.batch_size):
                    if position // self.num_samples != epoch:
                        epoch = position // self.num_samples
                        order = self.epoch_order(epoch)
                    index = int(order[position % self.num_samples])
                    batch.append(SampleRequest(index, position, width, height))
                yield batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch``, ``(num_samples,)`` int64."""
        rng = np.random.default_rng([self.seed, _ORDER_STREAM, epoch])
        return rng.permutation(self.num_samples)


class _EvalBatchSampler(Sampler[list[SampleRequest]]):
    """Every sample once, in dataset order, at one size."""

    def __init__(self, num_samples: int, batch_size: int, size: tuple[int, int]) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.size = size

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[list[SampleRequest]]:
        width, height = self.size
        for start in range(0, self.num_samples, self.batch_size):
            stop = min(start + self.batch_size, self.num_samples)
            yield [SampleRequest(i, i, width, height) for i in range(start, stop)]


TrainItem = tuple[np.ndarray, np.ndarray, np.ndarray]
EvalItem = tuple[np.ndarray, np.ndarray, np.ndarray, LetterboxMeta]


class _TrainView(Dataset[TrainItem]):
    """Loads and augments the sample a :class:`SampleRequest` names; seeded by its position."""

    def __init__(self, dataset: SampleSource, seed: int, params: AugmentParams) -> None:
        self.dataset = dataset
        self.seed = seed
        self.params = params

    def __getitem__(self, request: SampleRequest) -> TrainItem:
        rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, request.position])
        sample = self.dataset[request.sample_index]
        if not self.params.mosaic:
            return augment(sample, request.width, request.height, self.params, rng)
        # Like darknet, the other three tiles are random samples of the whole set.
        others = [self.dataset[int(i)] for i in rng.integers(0, len(self.dataset), 3)]
        return mosaic([sample, *others], request.width, request.height, self.params, rng)


class _EvalView(Dataset[EvalItem]):
    """Letterboxes the sample a :class:`SampleRequest` names, keeping the letterbox meta."""

    def __init__(self, dataset: SampleSource) -> None:
        self.dataset = dataset

    def __getitem__(self, request: SampleRequest) -> EvalItem:
        sample = self.dataset[request.sample_index]
        image, meta = letterbox(sample.image, request.width, request.height, sample.image_id)
        boxes = sample.boxes * meta.scale + np.array([meta.pad_x, meta.pad_y] * 2, dtype=np.float32)
        return image, boxes.astype(np.float32), sample.classes, meta


def _batch(
    items: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, 3, H, W)`` float in [0, 1]; targets ``(N, 6)`` with normalised boxes."""
    images = np.stack([item[0] for item in items])
    height, width = images.shape[1:3]
    boxes = np.concatenate([item[1] for item in items]) / [width, height, width, height]
    classes = np.concatenate([item[2] for item in items])
    batch_index = np.repeat(np.arange(len(items)), [len(item[2]) for item in items])
    targets = np.concatenate([batch_index[:, None], classes[:, None], boxes], axis=1)
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return tensor.float().div_(255), torch.from_numpy(targets.astype(np.float32))


def _collate_train(items: Sequence[TrainItem]) -> tuple[torch.Tensor, torch.Tensor]:
    return _batch(items)


def _collate_eval(
    items: Sequence[EvalItem],
) -> tuple[torch.Tensor, torch.Tensor, list[LetterboxMeta]]:
    images, targets = _batch([item[:3] for item in items])
    return images, targets, [item[3] for item in items]


def build_loader(
    dataset: SampleSource,
    *,
    batch_size: int,
    img_size: int | tuple[int, int],
    train: bool,
    seed: int = 0,
    workers: int = 0,
    multiscale: float = 0.0,
    augment_params: AugmentParams | None = None,
    subdivisions: int = 1,
    start_iteration: int = 0,
    iterations: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader[Any]:
    """A loader of batches in the ``docs/contracts.md`` batch contract.

    ``img_size``: the network input, ``width`` or ``(width, height)``, multiples of 32.
    ``train=True``: an :class:`IterationBatchSampler` stream of ``(images (B, 3, H, W), targets
    (N, 6))`` micro-batches of ``batch_size`` images, ``subdivisions`` per optimizer iteration,
    from iteration ``start_iteration`` to ``iterations`` (None: endless; with ``world_size``
    > 1 only process ``rank``'s share of each iteration's micro-batches), augmented with
    ``augment_params`` (default: none) at :func:`multiscale_size` sizes (``multiscale`` is
    darknet's ``random`` value). With darknet's ``batch`` and ``subdivisions``, pass
    ``batch_size=batch // subdivisions``. ``train=False``: each image once, in dataset order,
    letterboxed to ``img_size``, as ``(images, targets, metas)``, one :class:`LetterboxMeta`
    per image.
    Same seed, same batches, whatever ``workers``; the global torch and numpy RNGs are not
    touched. Memory is pinned when CUDA is available; workers persist across passes.
    """
    width, height = (img_size, img_size) if isinstance(img_size, int) else img_size
    if width % SIZE_STEP or height % SIZE_STEP or width < SIZE_STEP or height < SIZE_STEP:
        raise ValueError(f"img_size must be positive multiples of {SIZE_STEP}, got {img_size}")
    sampler: Sampler[list[SampleRequest]]
    view: Dataset[Any]
    if train:
        sampler = IterationBatchSampler(
            len(dataset),
            batch_size,
            seed=seed,
            size=(width, height),
            multiscale=multiscale,
            subdivisions=subdivisions,
            start_iteration=start_iteration,
            iterations=iterations,
            rank=rank,
            world_size=world_size,
        )
        view = _TrainView(dataset, seed, augment_params or AugmentParams())
        collate: Any = _collate_train
    else:
        if (
            multiscale
            or augment_params is not None
            or subdivisions != 1
            or start_iteration
            or iterations is not None
            or world_size != 1
        ):
            raise ValueError(
                "evaluation loaders take no multiscale, augment_params, subdivisions, "
                "start_iteration, iterations or world_size; they letterbox every image once"
            )
        sampler = _EvalBatchSampler(len(dataset), batch_size, (width, height))
        view = _EvalView(dataset)
        collate = _collate_eval
    return DataLoader(
        view,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        # DataLoader draws worker base seeds from this generator instead of the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )
