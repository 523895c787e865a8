"""Darknet's optimisation: SGD with momentum, weight decay off for biases and batch norm, and
darknet's learning-rate policies (burn-in, steps, poly, exp, sig, sgdr, constant).

Darknet divides the summed loss's gradient by the batch in its update; our loss is already
averaged over the images of a batch, so ``learning_rate`` here means the same as in the cfg.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

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
            # Cosine restarts whose period doubles, starting at `step` iterations.
            period, start = max(1, self.step), 0
            while t >= start + period:
                start, period = start + period, period * 2
            return lr * 0.5 * (1 + math.cos(math.pi * (t - start) / period))
        return lr


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


def build_optimizer(
    model: nn.Module, learning_rate: float, momentum: float, decay: float
) -> torch.optim.SGD:
    """SGD as darknet runs it (momentum, decoupled groups for decay)."""
    return torch.optim.SGD(
        parameter_groups(model, decay), lr=learning_rate, momentum=momentum, nesterov=False
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: LRSchedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose factor reproduces ``schedule`` (state_dict-resumable)."""
    base = schedule.learning_rate
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: schedule(t) / base)
