"""What a tenant stores on the artifact store (datasets, models' start weights, and jobs'
checkpoints), against its quota ``AETRAIN_MAX_TENANT_BYTES``."""

import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.db.models import Dataset, Job, ModelConfig
from api.core.settings import Settings
from api.schemas.usage import UsagePublic
from api.services.errors import OverQuota
from api.services.jobs import job_folder


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (links not followed; 0 when it does not exist)."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except FileNotFoundError:  # deleted while counted
                continue
    return total


def dataset_folder(settings: Settings, dataset_id: int) -> Path:
    """The dataset's folder on the artifact store, which the API made and owns."""
    return settings.artifacts_dir / "datasets" / str(dataset_id)


def model_folder(settings: Settings, model_id: int) -> Path:
    """An uploaded model's folder on the artifact store (its start weights)."""
    return settings.artifacts_dir / "models" / str(model_id)


def tenant_usage(session: Session, tenant_id: int, settings: Settings) -> UsagePublic:
    """The bytes the tenant's datasets, models' and jobs' folders take now, counted on disk."""
    datasets = session.scalars(select(Dataset.id).where(Dataset.tenant_id == tenant_id))
    models = session.scalars(select(ModelConfig.id).where(ModelConfig.tenant_id == tenant_id))
    jobs = session.scalars(select(Job.id).where(Job.tenant_id == tenant_id))
    dataset_bytes = sum(folder_bytes(dataset_folder(settings, i)) for i in datasets)
    model_bytes = sum(folder_bytes(model_folder(settings, i)) for i in models)
    job_bytes = sum(folder_bytes(job_folder(settings, i)) for i in jobs)
    return UsagePublic(
        stored_bytes=dataset_bytes + model_bytes + job_bytes,
        dataset_bytes=dataset_bytes,
        model_bytes=model_bytes,
        job_bytes=job_bytes,
        max_bytes=settings.max_tenant_bytes,
    )


def check_quota(session: Session, tenant_id: int, settings: Settings, adding: int) -> None:
    """OverQuota when storing ``adding`` more bytes would pass the tenant's quota."""
    usage = tenant_usage(session, tenant_id, settings)
    if usage.stored_bytes + adding > usage.max_bytes:
        raise OverQuota(
            f"this upload takes {adding} bytes, and you store {usage.stored_bytes} "
            f"({usage.dataset_bytes} in datasets, {usage.model_bytes} in models' weights, "
            f"{usage.job_bytes} in jobs' checkpoints) of your quota of {usage.max_bytes}; delete "
            "datasets (DELETE /v1/datasets/{id}), models (DELETE /v1/models/{id}) or finished "
            "jobs (DELETE /v1/jobs/{id}) you no longer need (see GET /v1/usage)"
        )
