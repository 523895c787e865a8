"""A job's spec, its resolved model and its dataset's folder, as the Trainer's configuration."""

from pathlib import Path

from ae_model.options import TrainConfig
from api.core.job_spec import JobCreate
from api.core.model_refs import ModelCfg


def train_config(
    spec: JobCreate,
    model: ModelCfg,
    data: Path,
    out: Path,
    start: tuple[Path, int | None] | None = None,
) -> TrainConfig:
    """The ae_model configuration of a job spec: ``model``'s text trains under its name,
    ``data`` is the dataset's folder, ``out`` the job's artifact folder and ``start`` the file
    its ``init`` names with its cutoff."""
    weights, cutoff = start if start is not None else (None, None)
    return TrainConfig(
        cfg=model.source, cfg_text=model.text, data=str(data), out=str(out), seed=spec.seed,
        ae=spec.ae.config() if spec.ae is not None else None, device=spec.device,
        weights=None if weights is None else str(weights), weights_cutoff=cutoff,
        **spec.train.model_dump(),
    )  # fmt: skip
