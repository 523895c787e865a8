"""Jobs, their events, metrics and checkpoints; what submitting one may answer besides 201."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import BAD_JSON, Page, UtcDatetime

# Documented on the routes that submit jobs: a job, a comparison.
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **BAD_JSON,
    429: {"description": "The tenant's jobs queued or running would pass AETRAIN_MAX_ACTIVE_JOBS."},
    503: {"description": "The task broker is unreachable; the job is recorded as failed."},
}


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    state: str
    comparison_id: int | None
    arm: str | None
    seed: int | None
    spec: dict[str, Any]
    resolved: dict[str, Any] | None = Field(
        description="The job resolved against its cfg and dataset (ae_model.resolve), from "
        "submission on: iterations, learning-rate schedule, input size, augmentation, AE layers; "
        "`notes` says what resolution changed on its own (a cfg schedule scaled to a shorter "
        "run), `warnings` what will train badly (a burn-in the run never leaves). The worker "
        "adds what only it knows (classes, amp_dtype)."
    )
    queue: str
    attempt: int
    iteration: int
    max_batches: int | None
    cancel_requested: bool
    result: dict[str, Any] | None
    failure_reason: str | None
    worker: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    heartbeat_at: UtcDatetime | None


class JobEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: UtcDatetime
    state: str
    message: str


class MetricPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    key: str
    step: int
    epoch: float | None
    """Passes over the training images at this step: ``step * batch / training images``."""
    value: float | None
    """Null where the value is not finite (a loss that became NaN): JSON has no NaN."""
    at: UtcDatetime


class MetricsPage(Page[MetricPublic]):
    """A page of a job's metric history, and where the next one starts."""

    next_since_step: int | None
    """Pass as ``since_step`` for the next page; None when this page reached the end."""


class CheckpointFile(BaseModel):
    size: int
    sha256: str


class CheckpointPublic(BaseModel):
    """A checkpoint (``last`` or ``best``) and its downloadable formats."""

    name: str
    iteration: int
    metrics: dict[str, Any]
    created_at: UtcDatetime
    formats: dict[str, CheckpointFile]
    """``pt`` (PyTorch checkpoint) and ``weights`` (darknet), with size and SHA-256."""
