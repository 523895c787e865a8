"""Check a detection dataset before anyone trains on it: a report of what is wrong, and where.

:func:`check_dataset` reads a dataset folder in the layouts :mod:`ae_model.data.layout`
describes and :func:`ae_model.data.datasets.open_dataset` reads (COCO JSON, a darknet list
``{split}.txt``, YOLO txt folders) and returns a :class:`DatasetReport`: errors (training would
fail or learn from wrong boxes) and warnings (it would work, but probably not as meant), each
naming the file and, for YOLO labels, the line, for COCO the image or annotation id, and what
to fix. Every string a report or its class names hold is storable text (no control characters,
no UTF-16 surrogate halves, bounded length), whatever the files contain. Torch-free on purpose:
the API validates uploads in the request without importing torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard

from PIL import Image

from ae_model.data.archive import NOT_TEXT, name_problem, quoted
from ae_model.data.layout import (
    IMAGE_SUFFIXES,
    SPLITS,
    coco_annotation_file,
    darknet_list_file,
    folder_images,
    label_path,
    names_file_candidates,
    split_folders,
)

# Splits the worker evaluates with COCOeval, which needs 'area' and 'iscrowd' on every box.
EVAL_SPLITS = frozenset({"val", "test"})
# Boxes may overhang the image by this fraction of its side (at least 1 px): rounding in
# annotation tools; the loader clips them.
BOX_TOLERANCE = 0.01
# Problems listed per kind in a report; the rest are only counted.
MAX_LISTED_PROBLEMS = 100
# Text files larger than this are refused rather than parsed into memory (COCO train2017's
# instances file is 450 MB).
MAX_ANNOTATION_BYTES = 1 << 30
MAX_TEXT_BYTES = 16 << 20
# A class name is a label shown in tables and plots, stored with the dataset.
MAX_CLASS_NAME_CHARS = 200
# A problem's file and message as stored: messages quote file contents, which can be anything.
MAX_PROBLEM_CHARS = 2000


@dataclass(frozen=True)
class Problem:
    """One problem: the file (relative to the dataset), where in it, and what to fix."""

    file: str
    message: str
    line: int | None = None
    image_id: int | None = None
    annotation_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, without the location fields that do not apply."""
        where = {"line": self.line, "image_id": self.image_id, "annotation_id": self.annotation_id}
        located = {key: value for key, value in where.items() if value is not None}
        return {"file": self.file, **located, "message": self.message}

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.annotation_id is not None:
            where += f" (annotation {self.annotation_id})"
        elif self.image_id is not None:
            where += f" (image {self.image_id})"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class SplitCounts:
    layout: str
    images: int
    objects: int


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found. ``ok`` means no errors (warnings are allowed).

    ``errors``/``warnings`` list at most ``MAX_LISTED_PROBLEMS`` each; ``omitted_errors`` and
    ``omitted_warnings`` count the rest.
    """

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    omitted_errors: int = 0
    omitted_warnings: int = 0
    class_names: list[str] = field(default_factory=list)
    splits: dict[str, SplitCounts] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error_count(self) -> int:
        return len(self.errors) + self.omitted_errors

    def as_dict(self) -> dict[str, Any]:
        """``{errors, warnings, omitted_errors, omitted_warnings, counts}``, JSON-ready;
        ``counts`` is per split ``{layout, images, objects}``."""
        return {
            "errors": [p.as_dict() for p in self.errors],
            "warnings": [p.as_dict() for p in self.warnings],
            "omitted_errors": self.omitted_errors,
            "omitted_warnings": self.omitted_warnings,
            "counts": {
                split: {"layout": c.layout, "images": c.images, "objects": c.objects}
                for split, c in self.splits.items()
            },
        }


def _storable(text: str) -> str:
    """``text`` with control characters and surrogate halves escaped, cut to
    ``MAX_PROBLEM_CHARS``: what a JSON column and a JSON response can hold."""
    if len(text) > MAX_PROBLEM_CHARS:
        text = text[: MAX_PROBLEM_CHARS - 1] + "…"
    return NOT_TEXT.sub(lambda found: ascii(found.group())[1:-1], text)


class _Recorder:
    """Collects problems with file names relative to ``display_root``; ``max_classes`` bounds
    the classes a dataset may declare (None: no bound)."""

    def __init__(self, display_root: Path, max_classes: int | None) -> None:
        self.display_root = display_root
        self.max_classes = max_classes
        self.report = DatasetReport()
        # Per dataset root: a names file serves every YOLO split and is checked once.
        self.names_files: dict[Path, tuple[str, ...] | None] = {}

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.display_root).as_posix()
        except ValueError:
            return path.name

    def error(self, path: Path, message: str, **where: Any) -> None:
        if len(self.report.errors) < MAX_LISTED_PROBLEMS:
            self.report.errors.append(self._problem(path, message, where))
        else:
            self.report.omitted_errors += 1

    def warning(self, path: Path, message: str, **where: Any) -> None:
        if len(self.report.warnings) < MAX_LISTED_PROBLEMS:
            self.report.warnings.append(self._problem(path, message, where))
        else:
            self.report.omitted_warnings += 1

    def _problem(self, path: Path, message: str, where: dict[str, Any]) -> Problem:
        return Problem(_storable(self.rel(path)), _storable(message), **where)


# ---------------------------------------------------------------------------------------------
# Datasets


def check_dataset(
    root: Path,
    splits: Sequence[str] = SPLITS,
    display_root: Path | None = None,
    max_classes: int | None = None,
) -> DatasetReport:
    """Validate the dataset at ``root``: every split present, every image readable, boxes of
    positive size inside their image (within ``BOX_TOLERANCE``), class ids in range, COCO
    references to declared images and categories, the same classes in every split, class
    names of one line of text (at most ``MAX_CLASS_NAME_CHARS``), and at most ``max_classes``
    of them (None: any number).

    Files in problems are named relative to ``display_root`` (default ``root``), e.g. the
    folder a zip was extracted into, so names match the paths in the zip.
    """
    root = Path(root)
    rec = _Recorder(Path(display_root) if display_root is not None else root, max_classes)
    names_by_split: dict[str, tuple[str, ...]] = {}
    for split in splits:
        result = _check_split(root, split, rec)
        if result is not None:
            names_by_split[split], rec.report.splits[split] = result
    if names_by_split:
        first_split, names = next(iter(names_by_split.items()))
        rec.report.class_names = list(names)
        for split, other in names_by_split.items():
            if other != names:
                rec.error(
                    root,
                    f"split '{split}' declares other classes than '{first_split}' "
                    f"({_first_difference(other, names)}); every split must declare the same "
                    "classes in the same order",
                )
    return rec.report


def _first_difference(names: Sequence[str], reference: Sequence[str]) -> str:
    """Where two class lists first differ, e.g. ``class 3 is 'cat', not 'dog'``."""
    pairs = zip(names, reference, strict=False)
    index = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
    if index is None:
        return f"{len(names)} classes, not {len(reference)}"
    return f"class {index} is {quoted(names[index])}, not {quoted(reference[index])}"


def _check_split(
    root: Path, split: str, rec: _Recorder
) -> tuple[tuple[str, ...], SplitCounts] | None:
    """Names and counts of one split, in the first layout of open_dataset's order that fits."""
    annotation_file = coco_annotation_file(root, split)
    folders = split_folders(root, split)
    if annotation_file.is_file():
        image_dir = next((f for f in folders if f.is_dir()), None)
        if image_dir is None:
            rec.error(
                annotation_file,
                f"found, but no image folder {rec.rel(folders[0])}/ or {rec.rel(folders[1])}/; "
                "put the split's images there",
            )
            return None
        return _check_coco(root, split, annotation_file, image_dir, rec)
    list_file = darknet_list_file(root, split)
    if list_file.is_file():
        images = _darknet_list_images(root, list_file, rec)
        return _check_yolo(root, split, "darknet_list", list_file, images, rec)
    for folder in folders:
        if folder.is_dir():
            return _check_yolo(root, split, "yolo", folder, folder_images(folder), rec)
    rec.error(
        root,
        f"no '{split}' split: add {rec.rel(annotation_file)} with images in "
        f"{rec.rel(folders[0])}/ (COCO), or images in {rec.rel(folders[0])}/ with labels in "
        f"{rec.rel(root / 'labels' / split)}/ (YOLO)",
    )
    return None


def _check_image(path: Path, rec: _Recorder, **where: Any) -> tuple[int, int] | None:
    """``(width, height)`` of a readable image, else None with an error recorded."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            size = im.size
            if size[0] * size[1] > (Image.MAX_IMAGE_PIXELS or math.inf):
                rec.error(
                    path,
                    f"image is {size[0]}x{size[1]} pixels, too large to train on; downscale it",
                    **where,
                )
                return None
            # Decoding (at reduced scale where the format allows) finds truncated files.
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # PIL names the file by its full path: a server's staging folder is nobody's business.
        reason = str(error).replace(str(path), path.name)
        rec.error(path, f"not a readable image ({reason}); replace or remove the file", **where)
        return None
    return size


def _box_outside(
    x1: float, y1: float, x2: float, y2: float, width: float, height: float
) -> str | None:
    """Which edge a box crosses by more than the tolerance, or None."""
    tol_x = max(1.0, BOX_TOLERANCE * width)
    tol_y = max(1.0, BOX_TOLERANCE * height)
    if x1 < -tol_x:
        return "left"
    if y1 < -tol_y:
        return "top"
    if x2 > width + tol_x:
        return "right"
    if y2 > height + tol_y:
        return "bottom"
    return None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite_numbers(values: Any, n: int) -> list[float] | None:
    if not isinstance(values, list) or len(values) != n:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None
    try:
        numbers = [float(v) for v in values]
    except OverflowError:  # an integer beyond float's range, e.g. 10**400 written out
        return None
    return numbers if all(math.isfinite(v) for v in numbers) else None


def _path_inside(root: Path, base: Path, name: str, base_shown: str) -> Path | str:
    """``base / name`` if ``name`` is a plain relative path that stays inside ``root`` and a
    file system can hold, else what is wrong with it (``base_shown`` names ``base``)."""
    problem = name_problem(name)
    if problem is not None:
        return problem
    relative = PurePosixPath(name)
    path = base / name
    if (
        relative.is_absolute()
        or ".." in relative.parts
        or not path.resolve().is_relative_to(root.resolve())
    ):
        return f"must be a path relative to {base_shown} and stay inside it"
    return path


def _read_text(path: Path, rec: _Recorder, limit: int = MAX_TEXT_BYTES) -> str | None:
    """The UTF-8 text of ``path``, or None with an error recorded."""
    size = path.stat().st_size
    if size > limit:
        rec.error(path, f"is {size} bytes, more than the {limit} accepted for this file")
        return None
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        rec.error(path, f"is not UTF-8 text ({error}); save it as UTF-8")
        return None
    if "\x00" in text:
        rec.error(path, "contains NUL characters (saved as UTF-16?); save it as UTF-8")
        return None
    return text


# COCO -----------------------------------------------------------------------------------------


def _check_coco(
    root: Path, split: str, annotation_file: Path, image_dir: Path, rec: _Recorder
) -> tuple[tuple[str, ...], SplitCounts] | None:
    text = _read_text(annotation_file, rec, MAX_ANNOTATION_BYTES)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:  # ValueError: also an integer of 5000 digits
        rec.error(annotation_file, f"is not valid JSON ({error}); fix the file")
        return None
    if not isinstance(data, dict):
        rec.error(annotation_file, "must be a JSON object with images, annotations, categories")
        return None
    entries = {}
    for key in ("images", "annotations", "categories"):
        value = data.get(key, [])
        if not isinstance(value, list):
            rec.error(annotation_file, f"'{key}' must be a list")
            return None
        entries[key] = value

    categories = _coco_categories(annotation_file, entries["categories"], rec)
    sizes = _coco_images(root, annotation_file, image_dir, entries["images"], rec)
    objects = _coco_annotations(
        split, annotation_file, entries["annotations"], sizes, categories, rec
    )
    if not sizes:
        rec.error(annotation_file, "lists no images; add the split's images")
    elif objects == 0:
        rec.warning(annotation_file, f"has no annotations: the '{split}' split has no objects")
    listed = {
        rec.rel(image_dir / str(image["file_name"]))
        for image in entries["images"]
        if isinstance(image, dict) and isinstance(image.get("file_name"), str)
    }
    unlisted = [
        p
        for p in sorted(image_dir.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES and rec.rel(p) not in listed
    ]
    if unlisted:
        rec.warning(
            unlisted[0],
            f"{len(unlisted)} image file(s) in {rec.rel(image_dir)}/ are not listed in "
            f"{annotation_file.name} (this is the first) and will not be used",
        )
    names = tuple(categories[c] for c in sorted(categories))
    return names, SplitCounts("coco", len(sizes), objects)


def _coco_categories(annotation_file: Path, entries: list[Any], rec: _Recorder) -> dict[int, str]:
    categories: dict[int, str] = {}
    for position, category in enumerate(entries):
        cat_id = category.get("id") if isinstance(category, dict) else None
        name = category.get("name") if isinstance(category, dict) else None
        if not _is_int(cat_id) or not isinstance(name, str) or not name:
            rec.error(
                annotation_file,
                f"categories[{position}] needs an integer 'id' and a non-empty 'name'",
            )
        elif (problem := _class_name_problem(name)) is not None:
            rec.error(annotation_file, f"categories[{position}] name {quoted(name)} {problem}")
        elif cat_id in categories:
            rec.error(
                annotation_file, f"category id {cat_id} is declared twice; ids must be unique"
            )
        else:
            categories[cat_id] = name
    if not entries:
        rec.error(
            annotation_file,
            'declares no categories; add {"id": 1, "name": ...} entries to \'categories\'',
        )
    _check_class_count(annotation_file, len(entries), rec)
    return categories


def _class_name_problem(name: str) -> str | None:
    """What keeps ``name`` from being a class name (one line of storable text), or None."""
    bad = NOT_TEXT.search(name)
    if bad is not None:
        return f"contains the character {bad.group()!a}; a class name is one line of text"
    if len(name) > MAX_CLASS_NAME_CHARS:
        return (
            f"is {len(name)} characters long, over the limit of {MAX_CLASS_NAME_CHARS}; shorten it"
        )
    return None


def _check_class_count(file: Path, count: int, rec: _Recorder) -> None:
    if rec.max_classes is not None and count > rec.max_classes:
        rec.error(
            file,
            f"declares {count} classes, more than this server's limit of {rec.max_classes}; "
            "merge or drop classes",
        )


def _coco_images(
    root: Path, annotation_file: Path, image_dir: Path, entries: list[Any], rec: _Recorder
) -> dict[Any, tuple[int, int]]:
    """Declared ``(width, height)`` per image id of every image entry that checks out."""
    sizes: dict[Any, tuple[int, int]] = {}
    seen_ids: set[Any] = set()
    for position, image in enumerate(entries):
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            rec.error(annotation_file, f"images[{position}] needs an integer 'id'")
            continue
        image_id = image["id"]
        if image_id in seen_ids:
            rec.error(
                annotation_file, "image id is used twice; ids must be unique", image_id=image_id
            )
            continue
        seen_ids.add(image_id)
        file_name, width, height = image.get("file_name"), image.get("width"), image.get("height")
        if not isinstance(file_name, str) or not file_name:
            rec.error(annotation_file, "needs a 'file_name'", image_id=image_id)
            continue
        if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            rec.error(
                annotation_file, "needs positive integer 'width' and 'height'", image_id=image_id
            )
            continue
        path = _path_inside(root, image_dir, file_name, f"{rec.rel(image_dir)}/")
        if isinstance(path, str):
            rec.error(annotation_file, f"file_name {quoted(file_name)} {path}", image_id=image_id)
            continue
        if not path.is_file():
            rec.error(
                annotation_file,
                f"file_name {quoted(file_name)}: {rec.rel(path)} does not "
                "exist; add the image or remove its entry",
                image_id=image_id,
            )
            continue
        actual = _check_image(path, rec, image_id=image_id)
        if actual is None:
            continue
        if actual != (width, height):
            rec.error(
                annotation_file,
                f"declares {width}x{height} but {rec.rel(path)} is "
                f"{actual[0]}x{actual[1]}; fix 'width' and 'height' (boxes are read in "
                "the declared size)",
                image_id=image_id,
            )
            continue
        sizes[image_id] = (width, height)
    return sizes


def _coco_annotations(
    split: str,
    annotation_file: Path,
    entries: list[Any],
    sizes: dict[Any, tuple[int, int]],
    categories: dict[int, str],
    rec: _Recorder,
) -> int:
    """Checks every annotation; returns the number of usable (non-crowd) boxes."""
    objects = 0
    seen_ids: set[Any] = set()
    missing_eval_keys: list[Any] = []
    for position, ann in enumerate(entries):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            rec.error(annotation_file, f"annotations[{position}] needs an integer 'id'")
            continue
        ann_id = ann["id"]
        if ann_id in seen_ids:
            rec.error(
                annotation_file,
                "annotation id is used twice; ids must be unique",
                annotation_id=ann_id,
            )
            continue
        seen_ids.add(ann_id)
        if "area" not in ann or "iscrowd" not in ann:
            missing_eval_keys.append(ann_id)
        image_id, category_id = ann.get("image_id"), ann.get("category_id")
        if not _is_int(category_id) or category_id not in categories:
            rec.error(
                annotation_file,
                f"category_id {category_id!r} is not declared in "
                "'categories'; declare it or fix the id",
                annotation_id=ann_id,
            )
            continue
        if not _is_int(image_id) or image_id not in sizes:
            rec.error(
                annotation_file,
                f"image_id {image_id!r} is not a usable image of this "
                "file (not listed, or its entry has errors); add or fix the image entry",
                annotation_id=ann_id,
            )
            continue
        bbox = _finite_numbers(ann.get("bbox"), 4)
        if bbox is None:
            rec.error(
                annotation_file,
                "'bbox' must be 4 finite numbers [x, y, width, height] in pixels",
                annotation_id=ann_id,
            )
            continue
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            rec.error(
                annotation_file,
                f"bbox {bbox} has no area (width and height must be > 0); fix or remove it",
                annotation_id=ann_id,
            )
            continue
        width, height = sizes[image_id]
        edge = _box_outside(x, y, x + w, y + h, width, height)
        if edge is not None:
            rec.error(
                annotation_file,
                f"bbox {bbox} ([x, y, width, height]) crosses the "
                f"{edge} edge of image {image_id} ({width}x{height}); fix the box",
                annotation_id=ann_id,
            )
            continue
        if not ann.get("iscrowd", 0):
            objects += 1
    if missing_eval_keys:
        message = (
            f"{len(missing_eval_keys)} annotation(s) lack 'area' or 'iscrowd' (the "
            f'first is shown); COCO evaluation needs both, e.g. "area": w*h, '
            '"iscrowd": 0'
        )
        report = rec.error if split in EVAL_SPLITS else rec.warning
        report(annotation_file, message, annotation_id=missing_eval_keys[0])
    return objects


# YOLO / darknet -------------------------------------------------------------------------------


def _darknet_list_images(root: Path, list_file: Path, rec: _Recorder) -> list[Path]:
    """Images of a darknet list file; entries must be relative to ``root`` and stay inside."""
    text = _read_text(list_file, rec)
    if text is None:
        return []
    images = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry:
            continue
        path = _path_inside(root, root, entry, "the dataset's top folder")
        if isinstance(path, str):
            rec.error(list_file, f"{quoted(entry)} {path}", line=number)
        elif not path.is_file():
            rec.error(
                list_file,
                f"{quoted(entry)} does not exist; add the image or remove the line",
                line=number,
            )
        else:
            images.append(path)
    return images


def _names_file(root: Path, rec: _Recorder) -> tuple[str, ...] | None:
    """Class names from the one ``*.names`` (or ``classes.txt``) at the top, as the loader;
    read (and its problems recorded) once, however many splits use it."""
    if root not in rec.names_files:
        rec.names_files[root] = _read_names_file(root, rec)
    return rec.names_files[root]


def _read_names_file(root: Path, rec: _Recorder) -> tuple[str, ...] | None:
    candidates = names_file_candidates(root)
    if len(candidates) != 1:
        found = ", ".join(rec.rel(c) for c in candidates)
        problem = f"found several ({found}); keep exactly one" if candidates else "found none"
        rec.error(
            root,
            f"YOLO labels need class names: a classes.txt or one .names file (one "
            f"name per line) at the top of the dataset; {problem}",
        )
        return None
    text = _read_text(candidates[0], rec)
    if text is None:
        return None
    names = []
    for number, line in enumerate(text.splitlines(), start=1):
        if name := line.strip():
            names.append(name)
            bad_name = _class_name_problem(name)
            if bad_name is not None:
                rec.error(candidates[0], f"class name {quoted(name)} {bad_name}", line=number)
    if not names:
        rec.error(candidates[0], "is empty; write one class name per line")
        return None
    _check_class_count(candidates[0], len(names), rec)
    if len(set(names)) != len(names):
        rec.warning(
            candidates[0],
            "lists a class name more than once; class ids are line "
            "numbers, so duplicates make two classes of one name",
        )
    return tuple(names)


def _check_yolo(
    root: Path,
    split: str,
    layout: str,
    source: Path,
    images: list[Path],
    rec: _Recorder,
) -> tuple[tuple[str, ...], SplitCounts] | None:
    names = _names_file(root, rec)
    if not images:
        rec.error(
            source, f"no images ({', '.join(IMAGE_SUFFIXES)}) for the '{split}' split; add them"
        )
        return None
    objects = 0
    labels_used: set[Path] = set()
    for image in images:
        size = _check_image(image, rec)
        label = label_path(image)
        if label.is_file():
            labels_used.add(label)
            if size is not None:
                objects += _check_label_file(label, size, len(names) if names else None, rec)
    if not labels_used:
        rec.warning(
            source,
            f"no label file found for any '{split}' image (expected e.g. "
            f"{rec.rel(_darknet_label_guess(images[0], root, split))}); every image "
            "is treated as having no objects",
        )
    elif objects == 0:
        rec.warning(source, f"the '{split}' split has no objects: its label files hold no boxes")
    label_dir = root / "labels" / split
    if label_dir.is_dir():
        orphans = sorted(p for p in label_dir.rglob("*.txt") if p not in labels_used)
        if orphans:
            rec.warning(
                orphans[0],
                f"{len(orphans)} label file(s) in {rec.rel(label_dir)}/ "
                "match no image (this is the first) and are ignored",
            )
    if names is None:
        return None
    return names, SplitCounts(layout, len(images), objects)


def _darknet_label_guess(image: Path, root: Path, split: str) -> Path:
    try:
        relative = image.relative_to(root / "images" / split)
    except ValueError:
        return image.with_suffix(".txt")
    return (root / "labels" / split / relative).with_suffix(".txt")


def _check_label_file(
    path: Path, image_size: tuple[int, int], num_classes: int | None, rec: _Recorder
) -> int:
    """Checks ``class cx cy w h`` lines (fractions of the image side) against the image's
    ``(width, height)`` in pixels; returns the number of valid boxes."""
    text = _read_text(path, rec)
    if text is None:
        return 0
    boxes = 0
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            rec.error(
                path,
                f"expected 5 numbers 'class cx cy w h', got {len(fields)} ({line.strip()[:60]!r})",
                line=number,
            )
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            rec.error(
                path, f"expected numbers 'class cx cy w h', got {line.strip()[:60]!r}", line=number
            )
            continue
        cls, cx, cy, w, h = values
        if not all(math.isfinite(v) for v in values):
            rec.error(path, "values must be finite numbers", line=number)
        elif cls < 0 or cls != round(cls):
            rec.error(path, f"class id {fields[0]} must be an integer >= 0", line=number)
        elif num_classes is not None and cls >= num_classes:
            rec.error(
                path,
                f"class id {int(cls)} is out of range: the names file lists "
                f"{num_classes} classes (ids 0..{num_classes - 1}); fix the id or add "
                "names",
                line=number,
            )
        elif w <= 0 or h <= 0:
            rec.error(
                path, f"box width {fields[3]} and height {fields[4]} must be > 0", line=number
            )
        elif edge := _box_outside(*_yolo_corners(cx, cy, w, h, image_size), *image_size):
            rec.error(
                path,
                f"box crosses the {edge} edge of the image: cx, cy, w, h are "
                "fractions of the image size and the box must lie within [0, 1]",
                line=number,
            )
        else:
            boxes += 1
    return boxes


def _yolo_corners(
    cx: float, cy: float, w: float, h: float, image_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Pixel ``x1, y1, x2, y2`` of a YOLO box (fractions) in an image of ``(width, height)``."""
    width, height = image_size
    return (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height
