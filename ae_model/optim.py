"""Darknet's optimisation: SGD with momentum or Adam (``adam=1``), weight decay off for biases
and batch norm, darknet's learning-rate policies (burn-in, steps, poly, exp, sig, sgdr,
constant, and aetrain's cosine), and the exponential moving average of the weights
(``ema_alpha``).

Darknet divides the summed loss's gradient by the batch in its update; our loss is already
averaged over the images of a batch, so ``learning_rate`` here means the same as in the cfg.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ae_model.options import LRPolicy


@dataclass(frozen=True)
class LRSchedule:
    """Darknet's ``get_current_rate`` as a function of the optimizer iteration ``t``."""

    learning_rate: float
    max_batches: int
    policy: str = LRPolicy.CONSTANT  # an LRPolicy or its value
    burn_in: int = 0
    power: float = 4.0
    steps: Sequence[int] = field(default_factory=tuple)
    scales: Sequence[float] = field(default_factory=tuple)
    step: int = 1
    scale: float = 1.0
    gamma: float = 1.0
    learning_rate_min: float = 0.00001
    sgdr_cycle: int = 0
    """Iterations of sgdr's first cycle; 0: ``max_batches`` (darknet's default)."""
    sgdr_mult: int = 2

    def __post_init__(self) -> None:
        if self.policy not in set(LRPolicy):
            raise ValueError(
                f"policy={self.policy!r} is not supported; use one of {', '.join(LRPolicy)}"
            )
        if len(self.steps) != len(self.scales):
            raise ValueError(
                f"policy=steps needs as many scales as steps (got {len(self.steps)} steps and "
                f"{len(self.scales)} scales)"
            )
        if self.max_batches <= 0:
            raise ValueError(f"max_batches must be positive, got {self.max_batches}")

    def __call__(self, t: int) -> float:
        lr = self.learning_rate
        if t < self.burn_in:
            # Darknet's burn-in: a power-4 ramp that keeps early, large gradients from diverging.
            return lr * (t / self.burn_in) ** self.power
        if self.policy == "steps":
            for step, scale in zip(self.steps, self.scales, strict=True):
                if step > t:
                    break
                lr *= scale
            return lr
        if self.policy == "step":
            return lr * self.scale ** (t // self.step)
        if self.policy == "poly":
            return lr * max(0.0, 1 - t / self.max_batches) ** self.power
        if self.policy == "exp":
            return lr * self.gamma**t
        if self.policy == "sig":
            # 1 / (1 + e^x), written so that a large |x| neither overflows nor loses the tail.
            x = self.gamma * (t - self.step)
            return lr * (math.exp(-x) / (1 + math.exp(-x)) if x > 0 else 1 / (1 + math.exp(x)))
        if self.policy == "sgdr":
            return self._cosine(lr, *self._sgdr_cycle(t))
        if self.policy == "cosine":
            length = max(1, self.max_batches - self.burn_in)
            return self._cosine(lr, min(t - self.burn_in, length), length)
        return lr

    def _cosine(self, lr: float, t: int, period: int) -> float:
        """From ``lr`` at ``t = 0`` down to ``learning_rate_min`` at ``t = period``."""
        low = self.learning_rate_min
        return low + 0.5 * (lr - low) * (1 + math.cos(math.pi * t / period))

    def _sgdr_cycle(self, t: int) -> tuple[int, int]:
        """``t`` within its cycle, and the cycle's length. As darknet's get_current_rate, a
        cycle ends at its last iteration included (the rate touches learning_rate_min there)
        and restarts after it; cycles start at 0, the burn-in does not shift them."""
        start, cycle = 0, self.sgdr_cycle or self.max_batches
        if self.sgdr_mult == 1:
            start = max(0, (t - 1) // cycle) * cycle  # equal cycles: no loop over them
        while start + cycle < t:
            start, cycle = start + cycle, cycle * self.sgdr_mult
        return t - start, cycle


def parameter_groups(model: nn.Module, decay: float) -> list[dict[str, object]]:
    """Two groups: conv weights with ``decay``; biases and batch-norm parameters without."""
    decayed: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
            (plain if is_norm or name == "bias" else decayed).append(param)
    return [{"params": decayed, "weight_decay": decay}, {"params": plain, "weight_decay": 0.0}]


@dataclass(frozen=True)
class Adam:
    """darknet's ``adam=1`` with its ``B1``, ``B2`` and ``eps``."""

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 0.000001


def build_optimizer(
    model: nn.Module,
    learning_rate: float,
    momentum: float,
    decay: float,
    adam: Adam | None = None,
) -> torch.optim.Optimizer:
    """SGD as darknet runs it (momentum, decay on the conv weights only), or with ``adam``
    darknet's Adam: bias-corrected moments, ``decay`` added to the gradient as darknet's
    update adds it (L2, torch's ``Adam``, not ``AdamW``'s decoupled decay), momentum unused."""
    groups = parameter_groups(model, decay)
    if adam is not None:
        return torch.optim.Adam(groups, lr=learning_rate, betas=(adam.b1, adam.b2), eps=adam.eps)
    return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=False)


def build_ema(model: nn.Module, alpha: float) -> AveragedModel:
    """darknet's ``ema_alpha``: after each update ``ema = alpha * ema + (1 - alpha) * w``,
    starting from a copy of ``model`` at its first :meth:`AveragedModel.update_parameters`.

    Batch-norm running statistics are averaged with the same rate (``use_buffers``), so the
    averaged network normalises with statistics of the weights it averages; darknet keeps the
    live network's and says they need recomputing (docs/training.md, "Recipe vocabulary")."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(alpha), use_buffers=True)


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: LRSchedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose factor reproduces ``schedule`` (state_dict-resumable)."""
    base = schedule.learning_rate
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: schedule(t) / base)
