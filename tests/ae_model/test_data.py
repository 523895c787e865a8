"""Data pipeline: COCO/YOLO loading, transforms that keep boxes on objects, loader determinism."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from ae_model.data import (
    AugmentParams,
    CocoDetection,
    DetectionDataset,
    IterationBatchSampler,
    Sample,
    YoloDataset,
    _hsv_jitter,  # the colour maths alone, without random draws
    augment,
    build_loader,
    letterbox,
    mosaic,
    multiscale_size,
    open_dataset,
    unletterbox_boxes,
)

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


def _draw_scenes(folder: Path) -> list[Path]:
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


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    _draw_scenes(tmp_path / "images" / "train")
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
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    return tmp_path


@pytest.fixture
def yolo_root(tmp_path: Path) -> Path:
    paths = _draw_scenes(tmp_path / "data" / "images")
    (tmp_path / "data" / "labels").mkdir()
    for path, (w, h, objects) in zip(paths, SCENES, strict=True):
        lines = [
            f"{[3, 7].index(c)} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} "
            f"{(x2 - x1) / w} {(y2 - y1) / h}"
            for x1, y1, x2, y2, c in objects
        ]
        if lines:
            (tmp_path / "data" / "labels" / f"{path.stem}.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "data" / "obj.names").write_text("three\nseven\n")
    listing = "".join(f"data/images/{p.name}\n" for p in paths)
    (tmp_path / "data" / "train.txt").write_text(listing)
    return tmp_path / "data"


def _expected(index: int, class_of: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    objects = SCENES[index][2]
    boxes = np.array([o[:4] for o in objects], dtype=np.float32).reshape(-1, 4)
    return boxes, np.array([class_of[o[4]] for o in objects], dtype=np.int64)


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
        boxes, classes = _expected(index, {3: 0, 7: 1})
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
        boxes, classes = _expected(index, {3: 0, 7: 1})
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


def _is_red(image: np.ndarray) -> np.ndarray:
    return (image[..., 0] > 150) & (image[..., 1] < 100) & (image[..., 2] < 110)


def _assert_boxes_on_objects(image: np.ndarray, boxes: np.ndarray, slivers: bool = False) -> None:
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
        _assert_boxes_on_objects(image, boxes)
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
        _assert_boxes_on_objects(image, boxes, slivers=True)
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


def test_letterbox_round_trip_through_the_eval_loader(coco_root: Path) -> None:
    dataset = open_dataset(coco_root, "train")
    loader = build_loader(dataset, batch_size=3, img_size=(128, 96), train=False)
    assert len(loader) == 2
    seen = 0
    for images, targets, metas in loader:
        assert images.shape[1:] == (3, 96, 128) and images.dtype == torch.float32
        for b, meta in enumerate(metas):
            sample = dataset[seen]
            assert (meta.image_id, meta.width, meta.height) == (
                sample.image_id,
                sample.image.shape[1],
                sample.image.shape[0],
            )
            mine = targets[targets[:, 0] == b]
            pixels = mine[:, 2:] * torch.tensor([128, 96, 128, 96])
            np.testing.assert_allclose(
                unletterbox_boxes(pixels, meta).numpy(), sample.boxes, atol=1e-3
            )
            np.testing.assert_allclose(
                unletterbox_boxes(pixels.numpy(), meta), sample.boxes, atol=1e-3
            )
            image = (images[b].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            _assert_boxes_on_objects(image, pixels.numpy())
            seen += 1
    assert seen == len(dataset)
    far = unletterbox_boxes(np.array([[-50.0, -50.0, 500.0, 500.0]]), metas[0])
    np.testing.assert_allclose(far, [[0, 0, metas[0].width, metas[0].height]])


def _collect(loader: torch.utils.data.DataLoader, count: int) -> list[tuple[torch.Tensor, ...]]:
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


def _same(a: list[tuple[torch.Tensor, ...]], b: list[tuple[torch.Tensor, ...]]) -> bool:
    return all(
        torch.equal(x, y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True)
    )


def test_loader_is_deterministic_and_independent_of_workers(coco_root: Path) -> None:
    dataset = open_dataset(coco_root, "train")
    options: dict[str, Any] = {
        "batch_size": 3,
        "img_size": 64,
        "train": True,
        "augment_params": HEAVY,
    }
    first = _collect(build_loader(dataset, seed=5, multiscale=1, **options), 4)
    again = _collect(build_loader(dataset, seed=5, multiscale=1, **options), 4)
    workers = _collect(build_loader(dataset, seed=5, multiscale=1, workers=2, **options), 4)
    other = _collect(build_loader(dataset, seed=6, multiscale=1, **options), 4)
    assert _same(first, again) and _same(first, workers) and not _same(first, other)
    images, targets = first[0]
    assert images.shape[:2] == (3, 3) and images.min() >= 0 and images.max() <= 1
    assert targets.shape[1] == 6 and ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()


def test_torch_and_numpy_global_rngs_are_untouched(coco_root: Path) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    expected = (torch.rand(1), np.random.rand())
    torch.manual_seed(0)
    np.random.seed(0)
    dataset = open_dataset(coco_root, "train")
    _collect(build_loader(dataset, batch_size=2, img_size=64, train=True, augment_params=HEAVY), 2)
    assert torch.equal(torch.rand(1), expected[0]) and np.random.rand() == expected[1]


class _Counting:
    """A dataset that counts the samples it is asked for."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset
        self.loads = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        self.loads += 1
        return self.dataset[index]


@pytest.mark.parametrize("subdivisions", [1, 2])
def test_starting_at_iteration_k_matches_iterating_from_zero(
    coco_root: Path, subdivisions: int
) -> None:
    dataset = _Counting(open_dataset(coco_root, "train"))
    options: dict[str, Any] = {
        "batch_size": 3,
        "img_size": 64,
        "train": True,
        "seed": 2,
        "multiscale": 1.0,
        "augment_params": HEAVY,
        "subdivisions": subdivisions,
        # The same end for both: darknet's largest-size tail depends on it.
        "iterations": 500,
    }
    k = 13
    from_zero = _collect(build_loader(dataset, **options), (k + 1) * subdivisions)
    dataset.loads = 0
    resumed = build_loader(dataset, start_iteration=k, **options)
    assert len(resumed) == (500 - k) * subdivisions
    first = _collect(resumed, subdivisions)
    assert dataset.loads == 3 * subdivisions  # nothing before iteration k was loaded
    assert _same(first, from_zero[k * subdivisions :])
    sizes = {tuple(batch[0].shape[2:]) for batch in first}
    assert len(sizes) == 1  # every micro-batch of an iteration has the same size


def test_each_epoch_visits_every_sample_once_across_batch_boundaries() -> None:
    sampler = IterationBatchSampler(10, 4, seed=1, size=(64, 64), iterations=5)
    requests = [r for batch in sampler for r in batch]
    assert [r.position for r in requests] == list(range(20))
    assert sorted(r.sample_index for r in requests[:10]) == list(range(10))
    assert sorted(r.sample_index for r in requests[10:]) == list(range(10))
    assert [r.sample_index for r in requests[:10]] != [r.sample_index for r in requests[10:]]
    with pytest.raises(TypeError, match="endless"):
        len(IterationBatchSampler(10, 4, seed=1, size=(64, 64)))


def test_multiscale_follows_darknets_rule() -> None:
    base = (416, 416)
    sizes = np.array([multiscale_size(3, t, base, 1.0) for t in range(3000)])
    assert (sizes % 32 == 0).all() and (sizes[:, 0] == sizes[:, 1]).all()
    # darknet: round(r * 416 / 32 + 1) * 32 for r in [1/1.4, 1.4], largest first.
    assert sizes.min() == 320 and sizes.max() == 608
    assert (sizes[:10] == 608).all()
    blocks = sizes[:, 0].reshape(-1, 10)
    assert (blocks == blocks[:, :1]).all()
    assert len(np.unique(blocks[:, 0])) >= 8
    assert multiscale_size(3, 2995, base, 1.0, max_iterations=3000) == (608, 608)
    assert multiscale_size(3, 57, base, 0.0) == base
    wide = np.array([multiscale_size(0, t, (320, 192), 1.2) for t in range(0, 2000, 10)])
    assert wide[:, 0].min() >= 288 and wide[:, 0].max() == 416 and wide[:, 1].max() == 256
    assert multiscale_size(9, 1234, base, 1.0) == multiscale_size(9, 1234, base, 1.0)


def test_bad_loader_arguments_are_refused(coco_root: Path) -> None:
    dataset = open_dataset(coco_root, "train")
    with pytest.raises(ValueError, match="multiples of 32"):
        build_loader(dataset, batch_size=2, img_size=100, train=True)
    with pytest.raises(ValueError, match="evaluation loaders"):
        build_loader(dataset, batch_size=2, img_size=64, train=False, augment_params=HEAVY)
    with pytest.raises(ValueError, match="jitter"):
        AugmentParams(jitter=0.6)
    params = AugmentParams.from_darknet({"jitter": ".3", "hue": ".1", "saturation": "1.5"})
    assert params == AugmentParams(jitter=0.3, hue=0.1, saturation=1.5, flip=True, letterbox=False)
