"""Loaders of batches in the contract of ``docs/contracts.md``: images float ``(B, 3, H, W)``
in [0, 1] and targets ``(N, 6)`` = ``batch_index, class_id, x1, y1, x2, y2`` normalised to the
input as fed.

Training is an endless (or ``iterations``-long) stream of batches, deterministic given the
seed whatever the number of workers, that can start at any iteration without loading the
batches it skips; multi-scale follows darknet's ``random=1``. Evaluation letterboxes every
image once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import count
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ae_model.cfg import SIZE_STEP, darknet_side, largest_multiscale_size, multiscale_coef
from ae_model.data.augment import (
    AugmentParams,
    LetterboxMeta,
    augment,
    letterbox,
    mosaic,
    rand_scale,
)
from ae_model.data.datasets import SampleSource

# darknet resizes the network every 10 iterations when random=1.
MULTISCALE_EVERY = 10
# darknet keeps the largest size for the last 100 iterations (its rolling BN statistics).
_MULTISCALE_TAIL = 100

# Independent random streams derived from the one user seed.
_ORDER_STREAM = 0
_AUGMENT_STREAM = 1
_SIZE_STREAM = 2


def multiscale_size(
    seed: int,
    iteration: int,
    base: tuple[int, int],
    random: float,
    max_iterations: int | None = None,
) -> tuple[int, int]:
    """Network input ``(width, height)`` for ``iteration`` under darknet's ``random`` key.

    darknet (AlexeyAB ``detector.c``) every 10 iterations: ``coef = 1.4`` if ``random == 1``
    else ``random``; ``r = rand_scale(coef)`` (``u ~ U(1, coef)``, u or 1/u); each side
    ``round(r * base / 32 + 1) * 32``; if ``r < 1`` and that exceeds the base, the base; at
    least 32. The largest size ``round(coef * base / 32 + 1) * 32`` is used for the first block
    (so running out of memory shows at once) and for blocks starting after ``max_iterations -
    100``. Here ``r`` is drawn from ``(seed, iteration // 10)``, so the size is a pure function
    of its arguments and a resumed run sees the same sizes. ``random == 0``: the base, always.
    """
    if random == 0:
        return base
    if random < 1:
        raise ValueError(f"random (multi-scale) must be 0, 1, or a scale limit > 1, got {random}")
    block = iteration // MULTISCALE_EVERY
    start = block * MULTISCALE_EVERY
    if block == 0 or (max_iterations is not None and start > max_iterations - _MULTISCALE_TAIL):
        return largest_multiscale_size(base, random)
    coef = multiscale_coef(random)
    magnitude, coin = np.random.default_rng([seed, _SIZE_STREAM, block]).random(2)
    r = rand_scale(coef, magnitude, coin)
    sides = tuple(darknet_side(r, side) for side in base)
    if r < 1 and (sides[0] > base[0] or sides[1] > base[1]):
        return base
    return max(sides[0], SIZE_STEP), max(sides[1], SIZE_STEP)


class SampleRequest(NamedTuple):
    """What a batch sampler asks of the dataset view for one slot of a batch."""

    sample_index: int  # index into the dataset
    position: int  # position in the stream of samples; seeds the sample's augmentation
    width: int
    height: int


class IterationBatchSampler(Sampler[list[SampleRequest]]):
    """Training batches by optimizer iteration, ``subdivisions`` micro-batches per iteration.

    Micro-batch ``m`` (iteration ``m // subdivisions``) holds stream positions
    ``m*B .. m*B+B-1`` (``B = batch_size``, the micro-batch size). Position ``p`` is sample
    ``perm_e[p % n]`` of epoch ``e = p // n``, ``perm_e`` a permutation drawn from
    ``(seed, e)``; batches run across epoch ends as darknet's do. Every micro-batch of
    iteration ``t`` has the input size :func:`multiscale_size` of ``(seed, t)``. Starting at
    ``start_iteration`` costs one permutation; ``iterations`` (absolute, exclusive) ends the
    stream, None never does. With ``world_size`` > 1 (data-parallel training) it yields only
    the micro-batches of process ``rank``: micro-batch ``j`` of each iteration goes to process
    ``j % world_size``, so the processes together see exactly the one-process stream.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int,
        size: tuple[int, int],
        multiscale: float = 0.0,
        subdivisions: int = 1,
        start_iteration: int = 0,
        iterations: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < 1:
            raise ValueError("the training dataset is empty")
        if batch_size < 1 or subdivisions < 1:
            raise ValueError(
                f"batch_size and subdivisions must be >= 1, got {batch_size}, {subdivisions}"
            )
        if world_size < 1 or subdivisions % world_size or not 0 <= rank < world_size:
            raise ValueError(
                f"subdivisions={subdivisions} must be a multiple of world_size={world_size}, "
                f"and rank={rank} in 0..{world_size - 1}"
            )
        if start_iteration < 0:
            raise ValueError(f"start_iteration must be >= 0, got {start_iteration}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.size = size
        self.multiscale = multiscale
        self.subdivisions = subdivisions
        self.start_iteration = start_iteration
        self.iterations = iterations
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        if self.iterations is None:
            raise TypeError("an endless training loader has no length; pass iterations")
        per_process = self.subdivisions // self.world_size
        return max(0, self.iterations - self.start_iteration) * per_process

    def __iter__(self) -> Iterator[list[SampleRequest]]:
        epoch, order = -1, np.zeros(0, dtype=np.int64)
        start, stop = self.start_iteration, self.iterations
        for iteration in count(start) if stop is None else range(start, stop):
            width, height = multiscale_size(
                self.seed, iteration, self.size, self.multiscale, self.iterations
            )
            first = iteration * self.subdivisions + self.rank
            for micro in range(first, (iteration + 1) * self.subdivisions, self.world_size):
                batch = []
                for position in range(micro * self.batch_size, (micro + 1) * self.batch_size):
                    if position // self.num_samples != epoch:
                        epoch = position // self.num_samples
                        order = self.epoch_order(epoch)
                    index = int(order[position % self.num_samples])
                    batch.append(SampleRequest(index, position, width, height))
                yield batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch``, ``(num_samples,)`` int64."""
        rng = np.random.default_rng([self.seed, _ORDER_STREAM, epoch])
        return rng.permutation(self.num_samples)


class _EvalBatchSampler(Sampler[list[SampleRequest]]):
    """Every sample once, in dataset order, at one size."""

    def __init__(self, num_samples: int, batch_size: int, size: tuple[int, int]) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.size = size

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[list[SampleRequest]]:
        width, height = self.size
        for start in range(0, self.num_samples, self.batch_size):
            stop = min(start + self.batch_size, self.num_samples)
            yield [SampleRequest(i, i, width, height) for i in range(start, stop)]


TrainItem = tuple[np.ndarray, np.ndarray, np.ndarray]
EvalItem = tuple[np.ndarray, np.ndarray, np.ndarray, LetterboxMeta]


class _TrainView(Dataset[TrainItem]):
    """Loads and augments the sample a :class:`SampleRequest` names; seeded by its position."""

    def __init__(self, dataset: SampleSource, seed: int, params: AugmentParams) -> None:
        self.dataset = dataset
        self.seed = seed
        self.params = params

    def __getitem__(self, request: SampleRequest) -> TrainItem:
        rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, request.position])
        sample = self.dataset[request.sample_index]
        if not self.params.mosaic:
            return augment(sample, request.width, request.height, self.params, rng)
        # Like darknet, the other three tiles are random samples of the whole set.
        others = [self.dataset[int(i)] for i in rng.integers(0, len(self.dataset), 3)]
        return mosaic([sample, *others], request.width, request.height, self.params, rng)


class _EvalView(Dataset[EvalItem]):
    """Letterboxes the sample a :class:`SampleRequest` names, keeping the letterbox meta."""

    def __init__(self, dataset: SampleSource) -> None:
        self.dataset = dataset

    def __getitem__(self, request: SampleRequest) -> EvalItem:
        sample = self.dataset[request.sample_index]
        image, meta = letterbox(sample.image, request.width, request.height, sample.image_id)
        boxes = sample.boxes * meta.scale + np.array([meta.pad_x, meta.pad_y] * 2, dtype=np.float32)
        return image, boxes.astype(np.float32), sample.classes, meta


def _batch(
    items: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, 3, H, W)`` float in [0, 1]; targets ``(N, 6)`` with normalised boxes."""
    images = np.stack([item[0] for item in items])
    height, width = images.shape[1:3]
    boxes = np.concatenate([item[1] for item in items]) / [width, height, width, height]
    classes = np.concatenate([item[2] for item in items])
    batch_index = np.repeat(np.arange(len(items)), [len(item[2]) for item in items])
    targets = np.concatenate([batch_index[:, None], classes[:, None], boxes], axis=1)
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return tensor.float().div_(255), torch.from_numpy(targets.astype(np.float32))


def _collate_train(items: Sequence[TrainItem]) -> tuple[torch.Tensor, torch.Tensor]:
    return _batch(items)


def _collate_eval(
    items: Sequence[EvalItem],
) -> tuple[torch.Tensor, torch.Tensor, list[LetterboxMeta]]:
    images, targets = _batch([item[:3] for item in items])
    return images, targets, [item[3] for item in items]


def build_loader(
    dataset: SampleSource,
    *,
    batch_size: int,
    img_size: int | tuple[int, int],
    train: bool,
    seed: int = 0,
    workers: int = 0,
    multiscale: float = 0.0,
    augment_params: AugmentParams | None = None,
    subdivisions: int = 1,
    start_iteration: int = 0,
    iterations: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader[Any]:
    """A loader of batches in the ``docs/contracts.md`` batch contract.

    ``img_size``: the network input, ``width`` or ``(width, height)``, multiples of 32.
    ``train=True``: an :class:`IterationBatchSampler` stream of ``(images (B, 3, H, W), targets
    (N, 6))`` micro-batches of ``batch_size`` images, ``subdivisions`` per optimizer iteration,
    from iteration ``start_iteration`` to ``iterations`` (None: endless; with ``world_size``
    > 1 only process ``rank``'s share of each iteration's micro-batches), augmented with
    ``augment_params`` (default: none) at :func:`multiscale_size` sizes (``multiscale`` is
    darknet's ``random`` value). With darknet's ``batch`` and ``subdivisions``, pass
    ``batch_size=batch // subdivisions``. ``train=False``: each image once, in dataset order,
    letterboxed to ``img_size``, as ``(images, targets, metas)``, one :class:`LetterboxMeta`
    per image.
    Same seed, same batches, whatever ``workers``; the global torch and numpy RNGs are not
    touched. Memory is pinned when CUDA is available; workers persist across passes.
    """
    width, height = (img_size, img_size) if isinstance(img_size, int) else img_size
    if width % SIZE_STEP or height % SIZE_STEP or width < SIZE_STEP or height < SIZE_STEP:
        raise ValueError(f"img_size must be positive multiples of {SIZE_STEP}, got {img_size}")
    sampler: Sampler[list[SampleRequest]]
    view: Dataset[Any]
    if train:
        sampler = IterationBatchSampler(
            len(dataset),
            batch_size,
            seed=seed,
            size=(width, height),
            multiscale=multiscale,
            subdivisions=subdivisions,
            start_iteration=start_iteration,
            iterations=iterations,
            rank=rank,
            world_size=world_size,
        )
        view = _TrainView(dataset, seed, augment_params or AugmentParams())
        collate: Any = _collate_train
    else:
        if (
            multiscale
            or augment_params is not None
            or subdivisions != 1
            or start_iteration
            or iterations is not None
            or world_size != 1
        ):
            raise ValueError(
                "evaluation loaders take no multiscale, augment_params, subdivisions, "
                "start_iteration, iterations or world_size; they letterbox every image once"
            )
        sampler = _EvalBatchSampler(len(dataset), batch_size, (width, height))
        view = _EvalView(dataset)
        collate = _collate_eval
    return DataLoader(
        view,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        # DataLoader draws worker base seeds from this generator instead of the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )
