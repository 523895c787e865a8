"""Comparisons: their jobs, progress and paired statistics, as clients see them."""

from typing import Any

from pydantic import BaseModel

from api.schemas.common import UtcDatetime


class ComparisonJob(BaseModel):
    id: int
    arm: str | None
    seed: int | None
    state: str
    iteration: int
    max_batches: int | None
    failure_reason: str | None


class ComparisonPublic(BaseModel):
    id: int
    name: str | None
    spec: dict[str, Any]
    reference: str
    created_at: UtcDatetime
    progress: dict[str, int]
    """Jobs per state, and ``total``."""
    jobs: list[ComparisonJob]
    summary: dict[str, Any] | None
    """Per-metric arm statistics and paired differences (see docs/comparisons.md); computed
    on the seeds whose jobs succeeded in both arms."""
    table: str | None
    notes: list[str]
    warnings: list[str]
    """Per arm, settings that will train badly (``resolved.warnings`` of its jobs, e.g. a
    burn-in the run never leaves): both arms of a comparison can "agree" by not learning."""
