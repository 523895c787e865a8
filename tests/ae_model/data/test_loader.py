"""Loaders: the letterbox round trip, determinism, resuming mid-stream, darknet's multi-scale."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ae_model.data.augment import unletterbox_boxes
from ae_model.data.datasets import DetectionDataset, Sample, open_dataset
from ae_model.data.loader import IterationBatchSampler, build_loader, multiscale_size
from tests.ae_model.data.scenes import HEAVY, assert_boxes_on_objects


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
            assert_boxes_on_objects(image, pixels.numpy())
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
