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


class SequentialArm(BaseModel):
    n: int
    """Pairs with a valid AP in both arms so far."""
    interval: tuple[float | None, float | None]
    """The anytime-valid interval of the mean difference (a fraction: 0.01 = 1 AP point);
    null bounds are infinite (too few pairs)."""
    stop: bool
    """Whether this arm's difference is decided (or the pairs reached the maximum)."""
    reason: str


class Sequential(BaseModel):
    """The stopping rule of seeds until decided: per non-reference arm, Lai's t-mixture
    confidence sequence of the headline metric's difference (docs/comparisons.md)."""

    metric: str
    confidence: float
    """Each arm's level: 0.95, split over the arms (Bonferroni) when there are several."""
    arms: dict[str, SequentialArm]


class ComparisonPublic(BaseModel):
    id: int
    name: str | None
    spec: dict[str, Any]
    reference: str
    created_at: UtcDatetime
    status: str
    """running (jobs run or a round will be added), decided, max_reached, finished (fixed
    seeds, every job ended), cancelled (a job was cancelled: no further rounds) or failed (no
    job succeeded, so no further rounds)."""
    rounds: int
    """Rounds of seeds started (1 for fixed seeds)."""
    stop_reason: str | None
    """Which rule stopped the comparison, and why, in words."""
    decided_at: UtcDatetime | None
    progress: dict[str, int]
    """Jobs per state, and ``total``."""
    jobs: list[ComparisonJob]
    summary: dict[str, Any] | None
    """Per-metric arm statistics and paired differences (see docs/comparisons.md); computed
    on the seeds whose jobs succeeded in both arms."""
    table: str | None
    sequential: Sequential | None
    """Seeds until decided only: the stopping rule's interval per arm, beside the summary's
    fixed-n intervals."""
    notes: list[str]
    warnings: list[str]
    """Per arm, settings that will train badly (``resolved.warnings`` of its jobs, e.g. a
    burn-in the run never leaves): both arms of a comparison can "agree" by not learning."""
