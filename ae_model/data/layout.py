"""Where a detection dataset keeps its files: the one definition the loader
(:mod:`ae_model.data.datasets`) and the check (:mod:`ae_model.data.check`) both follow.

A split (``train``, ``val``, and the optional ``test``) is found in the first of these layouts
that exists under the dataset's root: COCO ``annotations/instances_{split}.json`` with images
in ``images/{split}/`` or ``{split}/``; a darknet list ``{split}.txt``; a YOLO folder
``images/{split}/`` or ``{split}/`` (labels beside, see :func:`label_path`). YOLO class
names come from the one ``*.names`` file (or ``classes.txt``) at the top. ``train`` and
``val`` are required; a ``test`` split is used only when present (:func:`dataset_splits`).
Torch-free.
"""

from __future__ import annotations

from pathlib import Path

SPLITS = ("train", "val")
# Held out from training and from choosing a checkpoint: where a job that keeps its best
# checkpoint on val reports its metrics (docs/comparisons.md).
OPTIONAL_SPLITS = ("test",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def coco_annotation_file(root: Path, split: str) -> Path:
    """The COCO annotation file of ``split``: ``annotations/instances_{split}.json``."""
    return root / "annotations" / f"instances_{split}.json"


def darknet_list_file(root: Path, split: str) -> Path:
    """darknet's list of the images of ``split``: ``{split}.txt``, one path per line."""
    return root / f"{split}.txt"


def split_folders(root: Path, split: str) -> tuple[Path, Path]:
    """The folders that may hold ``split``'s images, in the order tried."""
    return root / "images" / split, root / split


def folder_images(folder: Path) -> list[Path]:
    """The images under ``folder/images`` if that exists, else under ``folder``, sorted."""
    base = folder / "images" if (folder / "images").is_dir() else folder
    return sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def has_split(root: Path, split: str) -> bool:
    """Whether ``root`` holds ``split`` in any of the layouts (its files are not checked)."""
    candidates = (coco_annotation_file(root, split), darknet_list_file(root, split))
    return any(p.is_file() for p in candidates) or any(
        f.is_dir() for f in split_folders(root, split)
    )


def dataset_splits(root: Path) -> tuple[str, ...]:
    """The splits of the dataset at ``root``: ``train``, ``val``, then each optional split
    present."""
    return SPLITS + tuple(s for s in OPTIONAL_SPLITS if has_split(root, s))


def names_file_candidates(folder: Path) -> list[Path]:
    """The ``*.names`` files in ``folder``, else its ``classes.txt``; exactly one names the
    classes, one per line (a class id is a line number)."""
    return sorted(folder.glob("*.names")) or sorted(folder.glob("classes.txt"))


def label_path(image_path: Path) -> Path:
    """Darknet's label file for an image: ``labels/`` beside ``images/`` (or ``JPEGImages/``)
    when that file exists, else the ``.txt`` next to the image."""
    parts = list(image_path.with_suffix(".txt").parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in ("images", "JPEGImages"):
            parts[i] = "labels"
            darknet_path = Path(*parts)
            if darknet_path.is_file():
                return darknet_path
            break
    return image_path.with_suffix(".txt")
