"""Drawn scenes with known boxes (red objects on blue) in COCO and YOLO layouts, and a check
that boxes sit on their objects: the data the dataset, augmentation and loader tests share."""

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ae_model.data.augment import AugmentParams

BACKGROUND = (30, 60, 200)
RED = (255, 0, 0)
# (width, height, objects as (x1, y1, x2, y2, COCO category id)); category ids are sparse.
SCENES = [
    (120, 90, [(10, 12, 40, 50, 3), (70, 20, 110, 80, 7)]),
    (80, 140, [(5, 100, 45, 135, 7)]),
    (100, 100, []),
    (150, 60, [(60, 5, 140, 55, 3), (2, 2, 22, 22, 3)]),
]
HEAVY = AugmentParams(jitter=0.35, saturation=1.5, exposure=1.5, flip=True)


def draw_scenes(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i, (w, h, objects) in enumerate(SCENES):
        image = np.empty((h, w, 3), dtype=np.uint8)
        image[:] = BACKGROUND
        for x1, y1, x2, y2, _ in objects:
            image[y1:y2, x1:x2] = RED
        paths.append(folder / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def write_coco(root: Path) -> Path:
    """The scenes as a COCO ``train`` split under ``root`` (sparse category ids 3 and 7, plus
    one crowd box); returns ``root``."""
    draw_scenes(root / "images" / "train")
    annotations = [
        {
            "id": len(SCENES) * 10 + k,
            "image_id": i + 1,
            "category_id": c,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1),
            "iscrowd": 0,
        }
        for i, (_, _, objects) in enumerate(SCENES)
        for k, (x1, y1, x2, y2, c) in enumerate(objects)
    ]
    crowd = {"id": 999, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "area": 25}
    coco = {
        "images": [
            {"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h}
            for i, (w, h, _) in enumerate(SCENES)
        ],
        "annotations": [*annotations, {**crowd, "iscrowd": 1}],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    return root


def write_yolo(root: Path) -> Path:
    """The scenes as a YOLO folder ``root/data`` (labels, ``obj.names``, a darknet list
    ``train.txt``); returns that folder."""
    paths = draw_scenes(root / "data" / "images")
    (root / "data" / "labels").mkdir()
    for path, (w, h, objects) in zip(paths, SCENES, strict=True):
        lines = [
            f"{[3, 7].index(c)} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} "
            f"{(x2 - x1) / w} {(y2 - y1) / h}"
            for x1, y1, x2, y2, c in objects
        ]
        if lines:
            (root / "data" / "labels" / f"{path.stem}.txt").write_text("\n".join(lines) + "\n")
    (root / "data" / "obj.names").write_text("three\nseven\n")
    listing = "".join(f"data/images/{p.name}\n" for p in paths)
    (root / "data" / "train.txt").write_text(listing)
    return root / "data"


def expected(index: int, class_of: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    objects = SCENES[index][2]
    boxes = np.array([o[:4] for o in objects], dtype=np.float32).reshape(-1, 4)
    return boxes, np.array([class_of[o[4]] for o in objects], dtype=np.int64)


def _is_red(image: np.ndarray) -> np.ndarray:
    return (image[..., 0] > 150) & (image[..., 1] < 100) & (image[..., 2] < 110)


def assert_boxes_on_objects(image: np.ndarray, boxes: np.ndarray, slivers: bool = False) -> None:
    """Red pixels lie in the boxes, and each box's red pixels reach its edges (to 1.5 px).

    ``slivers``: red outside every box is allowed in strips at most 3 px thin, the pixels of
    a box cut under ``MIN_BOX_SIDE`` (2 px) and dropped.
    """
    red = _is_red(image)
    covered = np.zeros_like(red)
    for x1, y1, x2, y2 in boxes.tolist():
        # Pixels whose centres lie within half a pixel of the box: the resampling blend zone.
        c0, r0 = int(np.floor(x1 - 0.5)), int(np.floor(y1 - 0.5))
        covered[max(r0, 0) : int(np.ceil(y2 + 0.5)), max(c0, 0) : int(np.ceil(x2 + 0.5))] = True
        rows, cols = np.nonzero(red[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))])
        assert rows.size, f"no object pixels in box {(x1, y1, x2, y2)}"
        found = [cols.min() + int(x1), rows.min() + int(y1), cols.max() + int(x1) + 1]
        found.append(rows.max() + int(y1) + 1)
        np.testing.assert_allclose(found, [x1, y1, x2, y2], atol=1.5)
    outside = red & ~covered
    if slivers:
        strips = ndimage.find_objects(ndimage.label(outside)[0])
        outside[:] = False
        for rows, cols in strips:
            outside[rows, cols] = min(rows.stop - rows.start, cols.stop - cols.start) > 3
    assert not outside.any(), "object pixels outside every box"
