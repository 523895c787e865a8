"""What a tenant stores on the artifact store (datasets, models' start weights, and jobs'
checkpoints), against its quota ``AETRAIN_MAX_TENANT_BYTES``."""

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core.artifacts import open_store
from api.core.db.models import Checkpoint, Dataset, Job, ModelConfig
from api.core.settings import Settings
from api.schemas.usage import UsagePublic
from api.services.errors import OverQuota


def model_folder(settings: Settings, model_id: int) -> Path:
    """An uploaded model's folder on the artifact store (its start weights)."""
    return settings.artifacts_dir / "models" / str(model_id)


def tenant_usage(session: Session, tenant_id: int, settings: Settings) -> UsagePublic:
    """The bytes the tenant stores now, as their rows recorded them when written (no walk of
    the artifact store): its datasets, its models' start weights and its jobs' checkpoint
    files; datasets stored before sizes were recorded are counted on the store."""
    datasets = session.execute(
        select(Dataset.id, Dataset.size).where(Dataset.tenant_id == tenant_id)
    ).all()
    unrecorded = [i for i, size in datasets if size is None]
    store = open_store(settings) if unrecorded else None
    dataset_bytes = sum(size for _, size in datasets if size is not None) + sum(
        store.size(f"datasets/{i}") for i in unrecorded if store is not None
    )
    weights = session.scalars(select(ModelConfig.weights).where(ModelConfig.tenant_id == tenant_id))
    model_bytes = sum(int(record["size"]) for record in weights if record)
    job_bytes = int(
        session.scalar(
            select(func.coalesce(func.sum(Checkpoint.size), 0))
            .join(Job, Job.id == Checkpoint.job_id)
            .where(Job.tenant_id == tenant_id)
        )
        or 0
    )
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
