"""A job's spec, its resolved model and its dataset's folder, as the Trainer's configuration."""

from pathlib import Path

from ae_model.options import TrainConfig
from api.core.job_spec import JobCreate
from api.core.model_refs import ModelCfg


def train_config(spec: JobCreate, model: ModelCfg, data: Path, out: Path) -> TrainConfig:
    """The ae_model configuration of a job spec: ``model``'s text trains under its name,
    ``data`` is the dataset's folder and ``out`` the job's artifact folder."""
    return TrainConfig(
        cfg=model.source, cfg_text=model.text, data=str(data), out=str(out), seed=spec.seed,
        ae=spec.ae.config() if spec.ae is not None else None, device=spec.device,
        **spec.train.model_dump(),
    )  # fmt: skip
