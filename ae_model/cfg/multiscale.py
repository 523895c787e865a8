"""darknet's multi-scale training sizes (``random=`` of the heads), as pure functions."""

from __future__ import annotations

import math

# darknet's resize_step: the network input is divided by up to 32 (five stride-2 stages),
# so every input side is a multiple of it.
SIZE_STEP = 32
# darknet's rand_coef when random=1.
MULTISCALE_DEFAULT_COEF = 1.4


def resolve_random(heads_random: float, multiscale: bool | None) -> float:
    """darknet's multi-scale ``random`` for a run: the heads' own value, or with the
    ``multiscale`` override on, that value (1 when the heads have none), off, 0."""
    if multiscale is None:
        return heads_random
    return (heads_random or 1.0) if multiscale else 0.0


def multiscale_coef(random: float) -> float:
    """darknet's ``rand_coef``, the largest multi-scale factor, for ``random`` >= 1."""
    return MULTISCALE_DEFAULT_COEF if random == 1 else random


def darknet_side(factor: float, side: int) -> int:
    """A multi-scale side: darknet's ``roundl(factor * side / 32 + 1) * 32``."""
    # roundl rounds halves away from zero; Python's round() would round them to even.
    return math.floor(factor * side / SIZE_STEP + 1 + 0.5) * SIZE_STEP


def largest_multiscale_size(base: tuple[int, int], random: float) -> tuple[int, int]:
    """The largest ``(width, height)`` darknet's multi-scale reaches from ``base``: with
    ``random`` 1 the factor 1.4, above 1 ``random`` itself; below 1 (off), ``base``."""
    if random < 1:
        return base
    coef = multiscale_coef(random)
    return darknet_side(coef, base[0]), darknet_side(coef, base[1])
