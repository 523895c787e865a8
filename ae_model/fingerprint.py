"""Fingerprints of what a run's seed fixes: its initial weights and its stream of training batches.

Two runs with the same seed (the arms of one comparison seed) must start from the same weights
and see the same batches; runs with different seeds must not. A comparison checks this from the
fingerprints each job records (``ae_model.compare.seed_checks``), so a seed that fails to reach
the initialisation or the data-loader workers shows instead of passing for seed noise.
"""

import hashlib
import json
from typing import Any

import torch
from torch import nn

# The stream fingerprint covers the micro-batches of the first iterations: enough to take in the
# data order, the augmentation draws and (from iteration 10 on) multi-scale sizes.
STREAM_FINGERPRINT_ITERATIONS = 100
# Every 8th pixel along each side of a batch's images: augmentation (colour, crop, flip) moves
# every pixel, so the subsample tells streams apart at 1/64 of the hashing.
_PIXEL_STRIDE = 8
# Modules of AE are not the network's weights; an arm with AE must hash as the baseline does.
_SKIPPED_PREFIX = "excitations."


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex) over the model's ``state_dict`` in sorted key order: each key, dtype,
    shape and the tensor's bytes; AE modules (``excitations.*``) are left out."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        if key.startswith(_SKIPPED_PREFIX):
            continue
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # A byte view works for every dtype (bfloat16 has no numpy equivalent).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """SHA-256 (hex) of JSON-ready ``settings`` (keys sorted): the settings besides the seed
    that shape a stream of batches, so that arms fed alike can be told from arms that are not."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


class StreamFingerprint:
    """A SHA-256 chain over the training micro-batches of the first ``iterations`` iterations.

    Each micro-batch hashes its input size, its targets ``(N, 6)`` (which images, boxes after
    crop/flip/scale) and a pixel subsample of its images ``(B, 3, H, W)`` (colour draws), on top
    of the digest so far. The digest is part of a checkpoint (:meth:`state`), so a resumed or
    rolled-back run goes on from it and ends with the digest of an uninterrupted run.
    """

    def __init__(self, iterations: int = STREAM_FINGERPRINT_ITERATIONS) -> None:
        self.iterations = iterations
        self.digest: bytes | None = bytes(32)

    def update(self, iteration: int, images: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one micro-batch of ``iteration`` (CPU tensors, as the loader yields them)."""
        if iteration >= self.iterations or self.digest is None:
            return
        chain = hashlib.sha256(self.digest)
        chain.update(f"{tuple(images.shape)}|".encode())
        chain.update(targets.contiguous().numpy().tobytes())
        pixels = images[:, :, ::_PIXEL_STRIDE, ::_PIXEL_STRIDE].contiguous()
        chain.update(pixels.numpy().tobytes())
        self.digest = chain.digest()

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of it."""
        return {"iterations": self.iterations, "digest": self.digest}

    def load_state(self, state: dict[str, Any] | None, iteration: int) -> None:
        """Continue from a checkpoint's :meth:`state` taken at ``iteration``; a checkpoint
        written before fingerprints (None) past iteration 0 leaves the digest unknown."""
        if state is None:
            self.digest = bytes(32) if iteration == 0 else None
            return
        self.iterations, self.digest = state["iterations"], state["digest"]

    def as_dict(self, max_batches: int) -> dict[str, Any]:
        """``data_stream`` (hex, None when unknown) and the iterations it covers."""
        return {
            "data_stream": None if self.digest is None else self.digest.hex(),
            "data_stream_iterations": min(self.iterations, max_batches),
        }
