"""What a checkpoint holds beside the weights: random-number states, and the settings that
make two runs the same run (a resume must continue the run it came from)."""

import dataclasses
import random
from typing import Any

import numpy as np
import torch

from ae_model.data.augment import AugmentParams

CHECKPOINT_VERSION = 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# What makes two runs the same run; output folder, device, workers and evaluation cadence may
# change between attempts.
_RUN_IDENTITY = ("seed", "augment", "ae")
# What resolution says about a run, not what the run is.
_REPORTS = frozenset({"notes", "warnings"})


def _recipe_defaults(resolved: dict[str, Any]) -> dict[str, Any]:
    """The recipe settings a checkpoint written before they were resolved trained with:
    SGD, no moving average, darknet's sgdr defaults."""
    return {
        "learning_rate_min": 0.00001,
        "sgdr_cycle": resolved.get("max_batches"),
        "sgdr_mult": 2,
        "optimizer": "sgd",
        "adam_b1": 0.9,
        "adam_b2": 0.999,
        "adam_eps": 0.000001,
        "ema_alpha": 0.0,
        "ema_start": 0,
    }


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"name: saved -> current"`` for each setting of the run that differs."""
    changed = [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in _RUN_IDENTITY
        if saved.get(key) != current.get(key)
    ]
    old, new = saved.get("resolved", {}), current.get("resolved", {})
    if old:
        old = {**_recipe_defaults(old), **old}
    if "augment" in old:
        # An augmentation added since the checkpoint was written (mosaic) was off in it.
        old = {**old, "augment": {**dataclasses.asdict(AugmentParams()), **old["augment"]}}
    for key in sorted((old.keys() | new.keys()) - _REPORTS):
        if old.get(key) != new.get(key):
            shown = "the cfg's text differs" if key == "cfg_text" else None
            changed.append(f"{key}: {shown or f'{old.get(key)!r} -> {new.get(key)!r}'}")
    return changed
