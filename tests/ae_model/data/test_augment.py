"""darknet's augmentation: boxes stay on their objects, mosaic, HSV maths, the letterbox."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ae_model.data.augment import (
    AugmentParams,
    _hsv_jitter,  # the colour maths alone, without random draws
    augment,
    letterbox,
    mosaic,
)
from ae_model.data.datasets import open_dataset
from tests.ae_model.data.scenes import HEAVY, assert_boxes_on_objects


@pytest.mark.parametrize("keep_aspect", [True, False])
def test_augment_keeps_boxes_on_their_objects(coco_root: Path, keep_aspect: bool) -> None:
    dataset = open_dataset(coco_root, "train")
    params = AugmentParams(
        jitter=HEAVY.jitter,
        saturation=HEAVY.saturation,
        exposure=HEAVY.exposure,
        flip=True,
        letterbox=keep_aspect,
    )
    flipped = 0
    for position in range(24):
        sample = dataset[position % len(dataset)]
        rng = np.random.default_rng([0, position])
        image, boxes, classes = augment(sample, 96, 64, params, rng)
        assert image.shape == (64, 96, 3) and image.dtype == np.uint8
        assert boxes.dtype == np.float32 and len(boxes) == len(classes)
        assert (boxes[:, 2:] - boxes[:, :2] >= 2).all()
        assert (
            (boxes >= 0).all() and (boxes[:, [0, 2]] <= 96).all() and (boxes[:, [1, 3]] <= 64).all()
        )
        assert_boxes_on_objects(image, boxes)
        flipped += bool(np.random.default_rng([0, position]).random(10)[4] < 0.5)
    assert 0 < flipped < 24


def test_mosaic_tiles_four_samples_with_boxes_on_their_objects(coco_root: Path) -> None:
    dataset = open_dataset(coco_root, "train")
    params = AugmentParams.from_darknet({"jitter": 0.2, "mosaic": 1})
    assert params.mosaic and not params.letterbox
    counts = []
    for position in range(16):
        samples = [dataset[(position + k) % len(dataset)] for k in range(4)]
        rng = np.random.default_rng([1, position])
        image, boxes, classes = mosaic(samples, 96, 64, params, rng)
        assert image.shape == (64, 96, 3) and boxes.dtype == np.float32
        assert len(boxes) == len(classes)
        assert (boxes[:, 2:] - boxes[:, :2] >= 2).all()
        assert_boxes_on_objects(image, boxes, slivers=True)
        again = mosaic(samples, 96, 64, params, np.random.default_rng([1, position]))
        np.testing.assert_array_equal(again[0], image)
        counts.append(len(boxes))
    # Four scenes' objects share each input: more boxes than any one scene has (two).
    assert max(counts) > 2


def test_neutral_augmentation_is_a_letterbox(coco_root: Path) -> None:
    sample = open_dataset(coco_root, "train")[1]
    image, boxes, _ = augment(sample, 96, 96, AugmentParams(), np.random.default_rng(0))
    expected, meta = letterbox(sample.image, 96, 96)
    np.testing.assert_array_equal(image, expected)
    assert meta.scale == pytest.approx(96 / 140) and meta.pad_y == 0
    shift = [meta.pad_x, 0, meta.pad_x, 0]
    np.testing.assert_allclose(boxes, sample.boxes * meta.scale + shift, rtol=1e-5)


def test_hsv_jitter_turns_the_hue_circle_and_scales_saturation_and_value() -> None:
    red = np.zeros((2, 2, 3), dtype=np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(_hsv_jitter(red, 0.5, 1, 1)[0, 0], [0, 255, 255], atol=3)
    np.testing.assert_allclose(_hsv_jitter(red, 0, 1, 0.5)[0, 0], [128, 0, 0], atol=2)
    np.testing.assert_allclose(_hsv_jitter(red, 0, 0, 1)[0, 0], [255, 255, 255], atol=2)


def test_augment_params_check_their_ranges_and_read_darknet_keys() -> None:
    with pytest.raises(ValueError, match="jitter"):
        AugmentParams(jitter=0.6)
    params = AugmentParams.from_darknet({"jitter": ".3", "hue": ".1", "saturation": "1.5"})
    assert params == AugmentParams(jitter=0.3, hue=0.1, saturation=1.5, flip=True, letterbox=False)


def test_torch_free_data_modules_import_without_torch() -> None:
    # Job settings are checked with AugmentParams, and the API checks and extracts uploads,
    # in processes that never import torch.
    modules = ["layout", "augment", "check", "archive", "synthetic"]
    code = (
        f"import sys; import {', '.join(f'ae_model.data.{m}' for m in modules)}; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
