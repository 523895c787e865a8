"""Generated datasets: determinism, valid COCO, boxes tight around the drawn pixels."""

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO

from ae_model.data.synthetic import (
    DIGIT_NAMES,
    SHAPE_NAMES,
    DatasetKind,
    RenderConfig,
    generate_dataset,
    render_image,
)

SMALL: dict[str, Any] = {"size": 96, "min_scale": 0.1, "max_scale": 0.4}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("kind", ["digits", "shapes"])
def test_same_seed_gives_identical_files_and_other_seeds_differ(
    tmp_path: Path, kind: DatasetKind
) -> None:
    a = _files(generate_dataset(kind, tmp_path / "a", train=4, val=2, seed=3, **SMALL).root)
    b = _files(generate_dataset(kind, tmp_path / "b", train=4, val=2, seed=3, **SMALL).root)
    c = _files(generate_dataset(kind, tmp_path / "c", train=4, val=2, seed=4, **SMALL).root)
    assert len(a) == 4 + 2 + 2
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a if name.endswith(".png"))


def test_val_does_not_depend_on_the_number_of_train_images(tmp_path: Path) -> None:
    small = generate_dataset("digits", tmp_path / "a", train=1, val=2, **SMALL)
    large = generate_dataset("digits", tmp_path / "b", train=5, val=2, **SMALL)
    assert _files(small.splits["val"].images_dir) == _files(large.splits["val"].images_dir)
    val_json = "instances_val.json"
    assert (small.root / "annotations" / val_json).read_bytes() == (
        large.root / "annotations" / val_json
    ).read_bytes()


@pytest.mark.parametrize(("kind", "names"), [("digits", DIGIT_NAMES), ("shapes", SHAPE_NAMES)])
def test_annotations_are_valid_coco(
    tmp_path: Path, kind: DatasetKind, names: tuple[str, ...]
) -> None:
    calls: list[int] = []
    info = generate_dataset(kind, tmp_path, train=6, val=3, progress=calls.append, **SMALL)
    assert calls == [1] * 9
    assert info.class_names == names
    for split, count in (("train", 6), ("val", 3)):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(info.splits[split].annotation_file))
        assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == list(names)
        assert sorted(coco.cats) == list(range(1, len(names) + 1))
        assert len(coco.imgs) == count == info.splits[split].num_images
        assert len(coco.anns) == info.splits[split].num_objects > 0
        for image in coco.imgs.values():
            assert (info.splits[split].images_dir / image["file_name"]).is_file()
            assert (image["width"], image["height"]) == (96, 96)
        for ann in coco.anns.values():
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 96 and y + h <= 96
            assert ann["area"] == w * h and ann["iscrowd"] == 0


@pytest.mark.parametrize("kind", ["digits", "shapes"])
def test_boxes_are_tight_around_the_pixels_objects_changed(kind: DatasetKind) -> None:
    config = RenderConfig(size=128, min_objects=3, max_objects=6)
    for index in range(8):
        rendered = render_image(kind, 0, "train", index, config)
        changed = np.any(rendered.image != rendered.background, axis=-1)
        inside_a_box = np.zeros_like(changed)
        for x, y, w, h in rendered.boxes.tolist():
            inside_a_box[y : y + h, x : x + w] = True
            region = changed[y : y + h, x : x + w]
            # Tight: every edge row and column of the box holds a changed pixel.
            assert region[0].any() and region[-1].any()
            assert region[:, 0].any() and region[:, -1].any()
        assert not (changed & ~inside_a_box).any()
        scale = np.maximum(rendered.boxes[:, 2], rendered.boxes[:, 3])
        assert scale.min() >= 0.05 * 128 * 0.5 and scale.max() <= 0.3 * 128 * 1.5


def test_objects_overlap_at_most_max_overlap_of_the_smaller_box() -> None:
    config = RenderConfig(size=128, min_objects=6, max_objects=6, max_overlap=0.2)
    for index in range(8):
        boxes = render_image("shapes", 1, "val", index, config).boxes
        x1, y1 = boxes[:, 0], boxes[:, 1]
        x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
        iw = np.clip(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0, None)
        ih = np.clip(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0, None)
        area = boxes[:, 2] * boxes[:, 3]
        ratio = iw * ih / np.minimum(area[:, None], area)
        np.fill_diagonal(ratio, 0)
        assert ratio.max(initial=0) <= 0.2


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset kind"):
        generate_dataset("faces", tmp_path, train=1, val=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="under 6 px"):
        generate_dataset("shapes", tmp_path, train=1, val=1, size=64, min_scale=0.05)
    stale = tmp_path / "images" / "train" / "other.jpg"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    with pytest.raises(FileExistsError, match="empty folder"):
        generate_dataset("shapes", tmp_path, train=1, val=1, **SMALL)
