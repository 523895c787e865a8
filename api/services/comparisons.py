"""Comparisons: creating arms x seeds of jobs, and their progress, paired statistics and plot."""

import io
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any, cast

from celery import Celery
from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from ae_model.compare import ArmResult, format_table, plot_comparison, summarize
from ae_model.resolve import ResolvedTraining
from api.core.db.models import (
    MAX_ROW_ID,
    Comparison,
    Dataset,
    Job,
    JobState,
    Metric,
    ModelConfig,
    utcnow,
)
from api.core.job_spec import ComparisonCreate, JobCreate
from api.core.model_refs import model_ref
from api.core.settings import Settings
from api.schemas.common import Page
from api.schemas.comparisons import ComparisonJob, ComparisonPublic
from api.services.errors import Invalid, NotFound
from api.services.jobs import (
    add_job,
    check_active_jobs,
    check_job_spec,
    delete_job_rows,
    enqueue,
    remove_job_folders,
)


def _get(session: Session, tenant_id: int, comparison_id: int) -> Comparison:
    row = None
    if 0 < comparison_id <= MAX_ROW_ID:
        row = session.scalar(
            select(Comparison).where(
                Comparison.id == comparison_id, Comparison.tenant_id == tenant_id
            )
        )
    if row is None:
        raise NotFound(f"comparison {comparison_id} not found")
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
    warnings = {
        f"arm {job.arm}: {warning}"
        for job in jobs
        for warning in (job.resolved or {}).get("warnings", [])
    }
    summary = table = None
    if states.get(JobState.succeeded, 0):
        result = summarize(_arm_results(spec, jobs), reference=spec.reference_arm)
        summary, table = result.to_dict(), format_table(result)
    return ComparisonPublic(
        id=row.id, name=row.name, spec=row.spec, reference=spec.reference_arm,
        created_at=row.created_at, progress=progress,
        jobs=[ComparisonJob.model_validate(job, from_attributes=True) for job in jobs],
        summary=summary, table=table, notes=notes, warnings=sorted(warnings),
    )  # fmt: skip


def _check_arm(
    session: Session,
    tenant_id: int,
    body: ComparisonCreate,
    index: int,
    spec: JobCreate,
    settings: Settings,
) -> ResolvedTraining:
    """``check_job_spec`` for arm ``index``, its error located where the fault is: under
    ``base`` when the base spec alone has the same fault, else under ``arms[index]`` (its
    ``ae`` or ``train``; a model over budget only through the arm's training size is the
    arm's ``train``)."""
    try:
        return check_job_spec(session, tenant_id, spec, settings)
    except Invalid as arm_error:
        try:
            check_job_spec(session, tenant_id, body.base, settings)
        except Invalid as base_error:
            if base_error.detail == arm_error.detail:
                raise _relocated(arm_error, lambda loc: ["base", *loc]) from None
        raise _relocated(
            arm_error,
            lambda loc: ["arms", index, *(loc if loc[:1] in (["ae"], ["train"]) else ["train"])],
        ) from None


def _relocated(error: Invalid, where: Callable[[list[Any]], list[Any]]) -> Invalid:
    """``error`` (FastAPI's list shape) with each entry's location after ``body`` moved."""
    entries = cast(list[dict[str, Any]], error.detail)
    return Invalid([{**entry, "loc": ["body", *where(entry["loc"][1:])]} for entry in entries])


def _arm_spec(body: ComparisonCreate, index: int, spec: dict[str, Any]) -> JobCreate:
    """The job spec of run ``index`` (arms within seeds); Invalid located under its arm."""
    try:
        return JobCreate.model_validate(spec)
    except ValidationError as error:
        arm_index = index % len(body.arms)
        raise Invalid(
            [
                {**e, "loc": ["body", "arms", arm_index, *e["loc"]], "input": None}
                for e in error.errors(include_url=False, include_context=False)
            ]
        ) from error


def create_comparison(
    session: Session, tenant_id: int, settings: Settings, celery: Celery, body: ComparisonCreate
) -> ComparisonPublic:
    """One job per arm and seed, each checked as a single job is; nothing is created unless
    all pass (Invalid, OverLimit), and Unavailable when their tasks cannot be sent."""
    runs = []
    resolved: dict[str, ResolvedTraining] = {}
    for index, (arm, seed, spec) in enumerate(body.job_specs()):
        job_spec = _arm_spec(body, index, spec)
        if index < len(body.arms):  # each arm's spec checked once; seeds do not change it
            resolved[arm] = _check_arm(session, tenant_id, body, index, job_spec, settings)
        runs.append((arm, seed, job_spec))
    check_active_jobs(session, tenant_id, settings, len(runs))
    row = Comparison(tenant_id=tenant_id, name=body.name, spec=body.model_dump(mode="json"))
    session.add(row)
    session.flush()
    created = []
    for arm, seed, job_spec in runs:
        job = Job(
            tenant_id=tenant_id, comparison_id=row.id, arm=arm, seed=seed,
            spec=job_spec.model_dump(mode="json"), queue=job_spec.queue, sent_at=utcnow(),
        )  # fmt: skip
        add_job(session, job, resolved[arm], f"comparison {row.id}, arm {arm}")
        created.append(job)
    session.commit()
    enqueue(celery, session, created)
    return _public(session, row)


def list_comparisons(
    session: Session, tenant_id: int, limit: int, offset: int
) -> Page[ComparisonPublic]:
    """The tenant's comparisons, newest first."""
    query = select(Comparison).where(Comparison.tenant_id == tenant_id)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Comparison.id.desc()).limit(limit).offset(offset))
    return Page(data=[_public(session, r) for r in rows], count=count)


def read_comparison(session: Session, tenant_id: int, comparison_id: int) -> ComparisonPublic:
    return _public(session, _get(session, tenant_id, comparison_id))


def delete_comparison(
    session: Session, tenant_id: int, settings: Settings, comparison_id: int
) -> list[int]:
    """Delete the comparison and its jobs (rows in one transaction, then their folders);
    Conflict, deleting nothing, while any of its jobs is queued or running. Returns the ids
    of the jobs deleted."""
    row = _get(session, tenant_id, comparison_id)
    jobs = _jobs(session, comparison_id)
    delete_job_rows(session, jobs)
    session.execute(delete(Comparison).where(Comparison.id == row.id))
    session.commit()
    ids = [job.id for job in jobs]
    remove_job_folders(settings, ids)
    return ids


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


def plot_png(sessions: sessionmaker[Session], tenant_id: int, comparison_id: int) -> bytes:
    """The comparison's plot as a PNG: metric per seed per arm, paired differences, curves.
    The rendering holds no session: one is opened for the reads only."""
    with sessions() as session:
        row = _get(session, tenant_id, comparison_id)
        spec = ComparisonCreate.model_validate(row.spec)
        jobs = _jobs(session, row.id)
        summary = summarize(_arm_results(spec, jobs), reference=spec.reference_arm)
        curves = _curves(session, jobs)
        setting = _setting(session, tenant_id, spec)
    buffer = io.BytesIO()
    plot_comparison(summary, curves, buffer, setting=setting)
    return buffer.getvalue()


def _setting(session: Session, tenant_id: int, spec: ComparisonCreate) -> str:
    """What the comparison trained on what, for its plot: ``"yolov3-tiny on digits (id 3)"``.
    Names deleted since are given by their reference."""
    ref = model_ref(spec.base.model)
    model = ref
    if isinstance(ref, int):
        upload = session.scalar(
            select(ModelConfig.name).where(
                ModelConfig.id == ref, ModelConfig.tenant_id == tenant_id
            )
        )
        model = upload or f"model {ref}"
    dataset = session.scalar(
        select(Dataset.name).where(
            Dataset.id == spec.base.dataset_id, Dataset.tenant_id == tenant_id
        )
    )
    return f"{model} on {dataset or 'dataset'} (dataset {spec.base.dataset_id})"
