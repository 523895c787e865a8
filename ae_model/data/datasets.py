"""Detection datasets: COCO JSON and darknet/YOLO txt, each image read as a :class:`Sample`.

A dataset (:class:`CocoDetection`, :class:`YoloDataset`) returns a :class:`Sample`: the image
as ``(H, W, 3)`` uint8 RGB and its boxes in pixel ``x1, y1, x2, y2`` with class indices
``0..C-1``; ``dataset.category_ids[c]`` is the COCO category id of class ``c``. Where the
files are is :mod:`ae_model.data.layout`'s; :func:`open_dataset` finds a split there.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from ae_model.data.layout import (
    IMAGE_SUFFIXES,
    coco_annotation_file,
    darknet_list_file,
    folder_images,
    label_path,
    names_file_candidates,
    split_folders,
)


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

    def box_sizes(self) -> np.ndarray:
        """Every box's width and height as fractions of its image's, ``(N, 2)`` (what anchors
        are fitted to: ``ae_model.anchors``), read from the annotations without the images."""
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

    def box_sizes(self) -> np.ndarray:
        sizes = [
            (boxes[:, 2:] - boxes[:, :2]) / (image["width"], image["height"])
            for boxes, image in zip(
                self._boxes, (self.coco.imgs[i] for i in self.image_ids), strict=True
            )
        ]
        return np.concatenate(sizes or [np.zeros((0, 2))]).astype(np.float64)

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

    def box_sizes(self) -> np.ndarray:
        sizes = [np.clip(labels[:, 3:5], 0, 1) for labels in self._labels]  # relative
        return np.concatenate(sizes or [np.zeros((0, 2))]).astype(np.float64)

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
    annotation_file = coco_annotation_file(root, split)
    folders = split_folders(root, split)
    list_file = darknet_list_file(root, split)
    if annotation_file.is_file():
        image_dir = next((f for f in folders if f.is_dir()), None)
        if image_dir is None:
            raise FileNotFoundError(
                f"{annotation_file} found but no image folder {folders[0]} or {folders[1]}"
            )
        return CocoDetection(annotation_file, image_dir)
    names = _names_file(root)
    if list_file.is_file():
        return YoloDataset(list_file, names)
    for folder in folders:
        if folder.is_dir():
            return YoloDataset(folder, names)
    raise FileNotFoundError(
        f"no '{split}' split in {root}: expected {annotation_file} (COCO), "
        f"{list_file} (darknet list) or a folder {folders[0]} or {folders[1]} (YOLO)"
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
    return folder_images(source)


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
    candidates = names_file_candidates(folder)
    return candidates[0] if len(candidates) == 1 else None
