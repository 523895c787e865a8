"""Anchors fitted to a dataset: IoU k-means, written into the cfg's heads, noted on the job."""

import json
from pathlib import Path

import numpy as np
import pytest

from ae_model.anchors import fit_anchors, mean_best_iou
from ae_model.cfg import RegionSection, YoloSection, parse_cfg, resolve_cfg, set_anchors
from ae_model.data.datasets import open_dataset
from ae_model.data.synthetic import generate_dataset
from ae_model.options import AnchorSource, TrainOptions
from ae_model.resolve import JobSettingsError, resolve_training

SIZES = np.array([[10.0, 30.0], [40.0, 20.0], [80.0, 90.0]])


def _clusters(per: int = 200, seed: int = 0) -> np.ndarray:
    """Boxes around three shapes, each size within +-10%."""
    rng = np.random.default_rng(seed)
    return np.concatenate([size * rng.uniform(0.9, 1.1, (per, 2)) for size in SIZES])


def test_kmeans_finds_the_clusters_sorted_by_area_and_beats_other_anchors() -> None:
    boxes = _clusters()
    anchors = fit_anchors(boxes, 3)
    assert np.abs(anchors - SIZES).max() <= 2  # each cluster's mean, rounded
    assert list(anchors.prod(axis=1)) == sorted(anchors.prod(axis=1))
    assert mean_best_iou(boxes, anchors) > 0.85
    assert mean_best_iou(boxes, anchors) > mean_best_iou(boxes, np.array([[20.0, 20.0]] * 3))
    assert (fit_anchors(boxes, 3) == anchors).all()  # deterministic


def test_fitting_refuses_what_it_cannot_fit() -> None:
    with pytest.raises(ValueError, match="fewer than 3 distinct sizes"):
        fit_anchors(np.array([[10.0, 10.0]] * 5 + [[20.0, 20.0]]), 3)
    with pytest.raises(ValueError, match="positive width and height"):
        fit_anchors(np.array([[10.0, 0.0], [5.0, 5.0]]), 1)


def test_set_anchors_edits_only_each_heads_anchors() -> None:
    original = resolve_cfg("yolov3-tiny").text
    edited = set_anchors(
        original, ["1,2, 3,4, 5,6, 7,8, 9,10, 11,12", "2,2, 3,3, 4,4, 5,5, 6,6, 7,7"]
    )
    changed = [
        (old, new)
        for old, new in zip(original.split("\n"), edited.split("\n"), strict=True)
        if old != new
    ]
    assert [new for _, new in changed] == [
        "anchors = 1,2, 3,4, 5,6, 7,8, 9,10, 11,12",
        "anchors = 2,2, 3,3, 4,4, 5,5, 6,6, 7,7",
    ]
    with pytest.raises(ValueError, match="1 anchor lists for 2 heads"):
        set_anchors(original, ["1,1"])


def test_resolving_with_boxes_fits_anchors_into_every_yolo_head() -> None:
    boxes = _clusters(seed=1) / 160  # fractions of a 160 px image
    r = resolve_training(
        resolve_cfg("yolov3-tiny-small"),
        TrainOptions(anchors=AnchorSource.FIT, width=160, height=160),
        train_images=10,
        box_sizes=np.repeat(boxes, 2, axis=0),  # six clusters' worth of boxes for num=6
    )
    assert r.anchors_fitted is not None and len(r.anchors_fitted) == 6
    heads = [s for s in r.cfg.sections if isinstance(s, YoloSection)]
    assert len(heads) == 2
    assert all(head.anchors == tuple(map(tuple, r.anchors_fitted)) for head in heads)
    assert r.layers[-1].section == heads[-1]  # the table's rows hold the edited heads
    [note] = [n for n in r.notes if n.startswith("anchors fitted")]
    assert f"{len(boxes) * 2} training boxes at 160x160" in note
    stored = r.as_dict()
    assert stored["anchors_fitted"] == [list(a) for a in r.anchors_fitted]
    assert "anchors = " + ", ".join(f"{w},{h}" for w, h in r.anchors_fitted) in stored["cfg_text"]


def test_region_heads_get_anchors_in_grid_cells() -> None:
    cfg = resolve_cfg("yolov2-tiny-small")
    [region] = [s for s in cfg.sections if isinstance(s, RegionSection)]
    boxes = np.concatenate([_clusters(per=100, seed=s) for s in range(2)])[: region.num * 60]
    boxes = np.concatenate([boxes, boxes * 0.5]) / 256
    r = resolve_training(cfg, TrainOptions(anchors=AnchorSource.FIT, width=256, height=256),
                         train_images=10, box_sizes=boxes)  # fmt: skip
    assert r.anchors_fitted is not None
    [fitted] = [s for s in r.cfg.sections if isinstance(s, RegionSection)]
    stride = r.layers[-1].out_stride
    assert np.allclose(np.array(fitted.anchors) * stride, r.anchors_fitted, atol=1e-3)


def test_the_api_resolves_without_boxes_and_says_when_anchors_are_fitted() -> None:
    cfg = resolve_cfg("yolov3-tiny-small")
    r = resolve_training(cfg, TrainOptions(anchors=AnchorSource.FIT), train_images=10)
    assert r.anchors_fitted is None and r.cfg.text == cfg.text
    assert any("fitted to the dataset's training boxes when the job starts" in n for n in r.notes)


def test_heads_with_different_anchor_counts_and_boxless_datasets_are_refused() -> None:
    text = resolve_cfg("yolov3-tiny-small").text
    first = text.index("num=6")
    text = text[:first] + "num=7" + text[first + 5 :]
    text = text.replace("anchors = 4,5,", "anchors = 1,1, 4,5,", 1)
    with pytest.raises(JobSettingsError, match="one num=") as refused:
        resolve_training(parse_cfg(text), TrainOptions(anchors=AnchorSource.FIT), train_images=1)
    assert refused.value.loc == ("train", "anchors")
    with pytest.raises(JobSettingsError, match="fewer than 6 distinct sizes"):
        resolve_training(resolve_cfg("yolov3-tiny-small"), TrainOptions(anchors=AnchorSource.FIT),
                         train_images=1, box_sizes=np.zeros((0, 2)))  # fmt: skip


@pytest.mark.parametrize("layout", ["coco", "yolo"])
def test_both_dataset_layouts_give_box_sizes_as_fractions(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "data"
    generate_dataset("shapes", root, train=6, val=2, size=128, seed=2)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    expected = sorted(
        (a["bbox"][2] / 128, a["bbox"][3] / 128) for a in coco["annotations"] if not a["iscrowd"]
    )
    if layout == "yolo":
        (root / "annotations").rename(tmp_path / "elsewhere")
        labels = root / "labels" / "train"
        labels.mkdir(parents=True)
        images = {i["id"]: i for i in coco["images"]}
        for image in coco["images"]:
            rows = [
                f"0 {(x + w / 2) / 128} {(y + h / 2) / 128} {w / 128} {h / 128}"
                for a in coco["annotations"]
                if a["image_id"] == image["id"]
                for x, y, w, h in [a["bbox"]]
            ]
            stem = Path(images[image["id"]]["file_name"]).stem
            (labels / f"{stem}.txt").write_text("\n".join(rows))
    sizes = open_dataset(root, "train").box_sizes()
    assert np.allclose(sorted(map(tuple, sizes)), expected, atol=1e-6)
