"""Comparisons: creating arms x seeds of jobs, and their progress, paired statistics and plot."""

import io
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any, cast

from celery import Celery
from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from ae_model.compare import format_table, plot_comparison, summarize
from ae_model.resolve import ResolvedTraining
from api.core.comparison_rounds import (
    PRIMARY_METRIC,
    arm_confidence,
    arm_results,
    sequential_decisions,
)
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
from api.core.job_spec import ComparisonCreate, JobCreate, SeedsUntilDecided
from api.core.jobstore import add_queued_jobs
from api.core.model_refs import model_ref
from api.core.settings import Settings
from api.schemas.common import Page
from api.schemas.comparisons import ComparisonJob, ComparisonPublic, Sequential, SequentialArm
from api.services.errors import Invalid, NotFound, invalid_field
from api.services.jobs import (
    check_active_jobs,
    check_job_spec,
    delete_job_rows,
    enqueue,
    queued_row,
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
    sequential = _sequential(spec, jobs)
    if states.get(JobState.succeeded, 0):
        result = summarize(
            arm_results(spec, jobs), reference=spec.reference_arm,
            target_effect=spec.target_effect,
        )  # fmt: skip
        summary, table = result.to_dict(), format_table(result)
        if spec.base.evaluate.checkpoint == "best":  # the jobs' results are what they declared
            table = f"Compared: each job's best checkpoint (by val AP) on test.\n\n{table}"
        # A seed that did not control what it claims voids the pairing: say so beside failures.
        if result.seed_control is not None:
            notes.extend(f"seed control: {m}" for m in result.seed_control.mismatches)
        if sequential is not None:
            table += "\n\n" + _sequential_lines(sequential)
    if row.stop_reason:
        notes.append(f"{row.status}: {row.stop_reason}")
    return ComparisonPublic(
        id=row.id, name=row.name, spec=row.spec, reference=spec.reference_arm,
        created_at=row.created_at, status=row.status, rounds=row.rounds,
        stop_reason=row.stop_reason, decided_at=row.decided_at, progress=progress,
        jobs=[ComparisonJob.model_validate(job, from_attributes=True) for job in jobs],
        summary=summary, table=table, sequential=sequential, notes=notes,
        warnings=sorted(warnings),
    )  # fmt: skip


def _sequential(spec: ComparisonCreate, jobs: list[Job]) -> Sequential | None:
    """The stopping rule's interval per arm, for seeds until decided (None for fixed seeds)."""
    if not isinstance(spec.seeds, SeedsUntilDecided):
        return None
    decisions = sequential_decisions(spec, spec.seeds, jobs)
    arms = {
        arm: SequentialArm(
            n=d.n,
            stop=d.stop,
            reason=d.reason,
            interval=(_finite(d.interval[0]), _finite(d.interval[1])),
        )
        for arm, d in decisions.items()
    }
    return Sequential(metric=PRIMARY_METRIC, confidence=arm_confidence(spec), arms=arms)


def _finite(bound: float) -> float | None:
    return bound if math.isfinite(bound) else None


def _sequential_lines(sequential: Sequential) -> str:
    """The table's lines for the stopping rule's intervals, in AP points like the table."""
    lines = [
        f"Anytime-valid {sequential.confidence * 100:g}% confidence sequence of the "
        f"{sequential.metric} difference (the stopping rule; wider than the t-interval):"
    ]
    for arm, state in sequential.arms.items():
        low, high = (
            "-inf" if state.interval[0] is None else f"{state.interval[0] * 100:+.2f}",
            "+inf" if state.interval[1] is None else f"{state.interval[1] * 100:+.2f}",
        )
        lines.append(f"  {arm}: [{low}, {high}] over {state.n} pairs")
    return "\n".join(lines)


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
    _check_evaluate(body)
    runs = []
    resolved: dict[str, ResolvedTraining] = {}
    for index, (arm, seed, spec) in enumerate(body.job_specs()):
        job_spec = _arm_spec(body, index, spec)
        if index < len(body.arms):  # each arm's spec checked once; seeds do not change it
            resolved[arm] = _check_arm(session, tenant_id, body, index, job_spec, settings)
        runs.append((arm, seed, job_spec))
    _check_round_size(body, settings)
    check_active_jobs(session, tenant_id, settings, len(runs))
    row = Comparison(tenant_id=tenant_id, name=body.name, spec=body.model_dump(mode="json"))
    session.add(row)
    session.flush()
    queued = []
    for arm, seed, job_spec in runs:
        fields = {
            "tenant_id": tenant_id, "comparison_id": row.id, "arm": arm, "seed": seed,
            "spec": job_spec.model_dump(mode="json"), "queue": job_spec.queue, "sent_at": utcnow(),
        }  # fmt: skip
        queued.append(queued_row(fields, resolved[arm], f"comparison {row.id}, arm {arm}"))
    created = add_queued_jobs(session, queued)
    session.commit()
    enqueue(celery, session, created)
    return _public(session, row)


def _check_evaluate(body: ComparisonCreate) -> None:
    """Invalid when an arm declares another evaluation than the base: arms are compared on
    one declared evaluation (the base's)."""
    declared = body.base.evaluate
    for index, arm in enumerate(body.arms):
        if arm.evaluate is not None and arm.evaluate != declared:
            raise invalid_field(
                ["arms", index, "evaluate", "checkpoint"],
                f"arm {arm.name} evaluates its {arm.evaluate.checkpoint} checkpoint and the base "
                f"its {declared.checkpoint}: every arm of a comparison is evaluated alike; set "
                "evaluate in base only",
            )


def _check_round_size(body: ComparisonCreate, settings: Settings) -> None:
    """Invalid when a later round of seeds could never start under the active-jobs limit."""
    if not isinstance(body.seeds, SeedsUntilDecided):
        return
    jobs = min(body.seeds.round, body.seeds.max - body.seeds.min) * len(body.arms)
    if jobs > settings.max_active_jobs:
        raise invalid_field(
            ["seeds", "round"],
            f"a round of {body.seeds.round} seeds x {len(body.arms)} arms is {jobs} jobs, more "
            f"than the {settings.max_active_jobs} you may have queued or running at once: "
            "add fewer seeds per round",
        )


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
        summary = summarize(
            arm_results(spec, jobs), reference=spec.reference_arm,
            target_effect=spec.target_effect,
        )  # fmt: skip
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
