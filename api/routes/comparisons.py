"""Comparisons: arms x seeds of jobs, paired statistics, verdict and plot."""

import io
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Annotated, Any, cast

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ae_model.compare import ArmResult, format_table, plot_comparison, summarize
from api.core import jobstore as job_ops
from api.core.db.models import Comparison, Job, JobState, Metric, utcnow
from api.core.job_spec import ComparisonCreate, JobCreate
from api.core.settings import Settings
from api.deps import SessionDep, TenantDep
from api.routes.jobs import SUBMIT_RESPONSES, check_active_jobs, check_job_spec, enqueue
from api.schemas import MAX_ROW_ID, UNAUTHORIZED, UtcDatetime

router = APIRouter(prefix="/v1/comparisons", tags=["comparisons"], responses=UNAUTHORIZED)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such comparison of this tenant."}
}


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


class ComparisonsPublic(BaseModel):
    data: list[ComparisonPublic]
    count: int


def _get(session: Session, tenant_id: int, comparison_id: int) -> Comparison:
    row = None
    if 0 < comparison_id <= MAX_ROW_ID:
        row = session.scalar(
            select(Comparison).where(
                Comparison.id == comparison_id, Comparison.tenant_id == tenant_id
            )
        )
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"comparison {comparison_id} not found")
    return row


def _jobs(session: Session, comparison_id: int) -> list[Job]:
    return list(
        session.scalars(select(Job).where(Job.comparison_id == comparison_id).order_by(Job.id))
    )


def _arm_results(spec: ComparisonCreate, jobs: list[Job]) -> list[ArmResult]:
    per_arm: dict[str, dict[int, dict[str, float]]] = {arm.name: {} for arm in spec.arms}
    for job in jobs:
        if job.state == JobState.succeeded and job.result and job.arm in per_arm:
            per_arm[job.arm][job.seed or 0] = job.result
    return [ArmResult(name=name, per_seed=seeds) for name, seeds in per_arm.items()]


def _public(session: Session, row: Comparison) -> ComparisonPublic:
    spec = ComparisonCreate.model_validate(row.spec)
    jobs = _jobs(session, row.id)
    states = Counter(job.state for job in jobs)
    progress = {state.value: states.get(state.value, 0) for state in JobState}
    progress["total"] = len(jobs)
    notes = [
        f"{job.arm} seed {job.seed} {job.state}: {job.failure_reason or 'no reason recorded'}"
        for job in jobs
        if job.state in (JobState.failed, JobState.cancelled)
    ]
    if notes:
        notes.append("statistics use only the seeds whose jobs succeeded in both arms")
    summary = table = None
    if states.get(JobState.succeeded, 0):
        result = summarize(_arm_results(spec, jobs), reference=spec.reference_arm)
        summary, table = result.to_dict(), format_table(result)
    return ComparisonPublic(
        id=row.id, name=row.name, spec=row.spec, reference=spec.reference_arm,
        created_at=row.created_at, progress=progress,
        jobs=[ComparisonJob.model_validate(job, from_attributes=True) for job in jobs],
        summary=summary, table=table, notes=notes,
    )  # fmt: skip


def _check_arm(
    session: Session,
    tenant_id: int,
    body: ComparisonCreate,
    index: int,
    spec: JobCreate,
    settings: Settings,
) -> None:
    """``check_job_spec`` for arm ``index``, its 422 located where the fault is: under
    ``base`` when the base spec alone has the same fault, else under ``arms[index]`` (its
    ``ae`` or ``train``; a model over budget only through the arm's training size is the
    arm's ``train``)."""
    try:
        check_job_spec(session, tenant_id, spec, settings)
    except HTTPException as arm_error:
        try:
            check_job_spec(session, tenant_id, body.base, settings)
        except HTTPException as base_error:
            if base_error.detail == arm_error.detail:
                raise _relocated(arm_error, lambda loc: ["base", *loc]) from None
        raise _relocated(
            arm_error,
            lambda loc: ["arms", index, *(loc if loc[:1] in (["ae"], ["train"]) else ["train"])],
        ) from None


def _relocated(error: HTTPException, where: Callable[[list[Any]], list[Any]]) -> HTTPException:
    """``error`` (FastAPI's list shape) with each entry's location after ``body`` moved."""
    entries = cast(list[dict[str, Any]], error.detail)
    detail = [{**entry, "loc": ["body", *where(entry["loc"][1:])]} for entry in entries]
    return HTTPException(error.status_code, detail)


@router.post(
    "",
    response_model=ComparisonPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Compare arms (e.g. baseline vs AE) over several seeds",
    responses=SUBMIT_RESPONSES,
)
def create_comparison(
    body: ComparisonCreate, request: Request, session: SessionDep, tenant_id: TenantDep
) -> ComparisonPublic:
    """Creates one job per arm and seed. Each arm is the base job with the arm's overrides;
    a seed fixes initial weights, data order and augmentation identically in every arm."""
    runs = []
    for index, (arm, seed, spec) in enumerate(body.job_specs()):
        try:
            job_spec = JobCreate.model_validate(spec)
        except ValidationError as error:
            arm_index = index % len(body.arms)
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                [
                    {**e, "loc": ["body", "arms", arm_index, *e["loc"]], "input": None}
                    for e in error.errors(include_url=False, include_context=False)
                ],
            ) from error
        if index < len(body.arms):  # each arm's spec checked once; seeds do not change it
            _check_arm(session, tenant_id, body, index, job_spec, request.app.state.settings)
        runs.append((arm, seed, job_spec))
    check_active_jobs(request, session, tenant_id, len(runs))
    row = Comparison(tenant_id=tenant_id, name=body.name, spec=body.model_dump(mode="json"))
    session.add(row)
    session.flush()
    created = []
    for arm, seed, job_spec in runs:
        job = Job(
            tenant_id=tenant_id, comparison_id=row.id, arm=arm, seed=seed,
            spec=job_spec.model_dump(mode="json"), queue=job_spec.queue, sent_at=utcnow(),
        )  # fmt: skip
        session.add(job)
        session.flush()
        job_ops.add_event(session, job.id, JobState.queued, f"comparison {row.id}, arm {arm}")
        created.append(job)
    session.commit()
    enqueue(request.app.state.celery, session, created)
    return _public(session, row)


@router.get("", response_model=ComparisonsPublic, summary="List comparisons")
def list_comparisons(
    session: SessionDep,
    tenant_id: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> ComparisonsPublic:
    query = select(Comparison).where(Comparison.tenant_id == tenant_id)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Comparison.id.desc()).limit(limit).offset(offset))
    return ComparisonsPublic(data=[_public(session, r) for r in rows], count=count)


@router.get(
    "/{comparison_id}",
    response_model=ComparisonPublic,
    summary="Progress and results",
    responses=NOT_FOUND,
)
def read_comparison(
    comparison_id: int, session: SessionDep, tenant_id: TenantDep
) -> ComparisonPublic:
    """Progress, then for AP, AP50, AP75, APs, APm, APl: each arm's per-seed values, mean and
    std, the paired difference to the reference arm with its 95% CI and p-value, and a
    verdict in words that states the seed noise."""
    return _public(session, _get(session, tenant_id, comparison_id))


def _curves(session: Session, jobs: list[Job]) -> dict[str, list[dict[str, list[float]]]]:
    """Per arm, per seed: training loss and validation AP against the iteration."""
    ids = [job.id for job in jobs]
    series: dict[int, dict[str, list[float]]] = defaultdict(
        lambda: {"iteration": [], "loss": [], "val_iteration": [], "val_AP": []}
    )
    rows = session.execute(
        select(Metric.job_id, Metric.key, Metric.step, Metric.value)
        .where(Metric.job_id.in_(ids), Metric.key.in_(["loss", "val/AP"]))
        .order_by(Metric.job_id, Metric.step)
    )
    for job_id, key, step, value in rows:
        s = series[job_id]
        if key == "loss":
            s["iteration"].append(step)
            s["loss"].append(value)
        else:
            s["val_iteration"].append(step)
            s["val_AP"].append(value)
    curves: dict[str, list[dict[str, list[float]]]] = defaultdict(list)
    for job in jobs:
        if job.id in series and job.arm is not None:
            curves[job.arm].append(series[job.id])
    return dict(curves)


@router.get(
    "/{comparison_id}/plot.png",
    response_class=Response,
    summary="Plot: metric per seed per arm, paired differences, learning curves",
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND},
)
def comparison_plot(comparison_id: int, session: SessionDep, tenant_id: TenantDep) -> Response:
    row = _get(session, tenant_id, comparison_id)
    spec = ComparisonCreate.model_validate(row.spec)
    jobs = _jobs(session, row.id)
    summary = summarize(_arm_results(spec, jobs), reference=spec.reference_arm)
    buffer = io.BytesIO()
    plot_comparison(summary, _curves(session, jobs), buffer)
    return Response(buffer.getvalue(), media_type="image/png")
