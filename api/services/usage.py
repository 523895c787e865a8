"""What a tenant stores on the artifact store (datasets, and jobs' checkpoints), against its
quota ``AETRAIN_MAX_TENANT_BYTES``."""

import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.db.models import Dataset, Job
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


def tenant_usage(session: Session, tenant_id: int, settings: Settings) -> UsagePublic:
    """The bytes the tenant's datasets and jobs' folders take now, counted on disk."""
    datasets = session.scalars(select(Dataset.id).where(Dataset.tenant_id == tenant_id))
    jobs = session.scalars(select(Job.id).where(Job.tenant_id == tenant_id))
    dataset_bytes = sum(folder_bytes(dataset_folder(settings, i)) for i in datasets)
    job_bytes = sum(folder_bytes(job_folder(settings, i)) for i in jobs)
    return UsagePublic(
        stored_bytes=dataset_bytes + job_bytes,
        dataset_bytes=dataset_bytes,
        job_bytes=job_bytes,
        max_bytes=settings.max_tenant_bytes,
    )


def check_quota(session: Session, tenant_id: int, settings: Settings, adding: int) -> None:
    """OverQuota when storing ``adding`` more bytes would pass the tenant's quota."""
    usage = tenant_usage(session, tenant_id, settings)
    if usage.stored_bytes + adding > usage.max_bytes:
        raise OverQuota(
            f"this dataset takes {adding} bytes, and you store {usage.stored_bytes} "
            f"({usage.dataset_bytes} in datasets, {usage.job_bytes} in jobs' checkpoints) of "
            f"your quota of {usage.max_bytes}; delete datasets (DELETE /v1/datasets/{{id}}) or "
            "finished jobs (DELETE /v1/jobs/{id}) you no longer need (see GET /v1/usage)"
        )
