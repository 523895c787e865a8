"""COCO and YOLO datasets: class ids, boxes in pixels, layouts and label errors."""

from pathlib import Path

import numpy as np
import pytest

from ae_model.data.datasets import CocoDetection, YoloDataset, open_dataset
from tests.ae_model.data.scenes import SCENES, expected


def test_coco_dataset_maps_sparse_category_ids_in_sorted_order(coco_root: Path) -> None:
    dataset = CocoDetection(
        coco_root / "annotations/instances_train.json", coco_root / "images/train"
    )
    assert dataset.category_ids == (3, 7) and dataset.class_names == ("three", "seven")
    assert len(dataset) == len(SCENES)
    for index, (w, h, _) in enumerate(SCENES):
        sample = dataset[index]
        assert sample.image.shape == (h, w, 3) and sample.image.dtype == np.uint8
        assert sample.image_id == index + 1
        boxes, classes = expected(index, {3: 0, 7: 1})
        np.testing.assert_array_equal(sample.boxes, boxes)  # the crowd box is left out
        np.testing.assert_array_equal(sample.classes, classes)
    assert isinstance(open_dataset(coco_root, "train"), CocoDetection)


@pytest.mark.parametrize("source", ["", "train.txt"])
def test_yolo_folder_and_darknet_list_load_the_same_boxes(yolo_root: Path, source: str) -> None:
    dataset = YoloDataset(yolo_root / source)
    assert dataset.class_names == ("three", "seven") and dataset.category_ids == (1, 2)
    assert [p.name for p in dataset.image_paths] == [f"{i}.png" for i in range(len(SCENES))]
    for index in range(len(SCENES)):
        sample = dataset[index]
        boxes, classes = expected(index, {3: 0, 7: 1})
        np.testing.assert_allclose(sample.boxes, boxes, atol=1e-3)
        np.testing.assert_array_equal(sample.classes, classes)
    gt = dataset.coco_ground_truth()
    assert len(gt.imgs) == len(SCENES) and len(gt.anns) == sum(len(s[2]) for s in SCENES)
    x, y, w, h = gt.anns[1]["bbox"]
    assert np.allclose([x, y, x + w, y + h], SCENES[0][2][0][:4], atol=1e-3)


def test_yolo_layouts_and_label_errors(yolo_root: Path) -> None:
    assert isinstance(open_dataset(yolo_root, "train"), YoloDataset)
    (yolo_root / "labels" / "1.txt").write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(ValueError, match="5 numbers"):
        YoloDataset(yolo_root)
    (yolo_root / "labels" / "1.txt").write_text("2 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ValueError, match="class id 2"):
        YoloDataset(yolo_root)
    with pytest.raises(FileNotFoundError, match="no 'val' split"):
        open_dataset(yolo_root, "val")
