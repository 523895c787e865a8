"""Jobs: checking a job's spec against the tenant's data and this server's budgets,
submitting, listing, cancelling, deleting, and reading a job's log, new metrics and
checkpoints."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from ae_model.cfg import CfgError
from ae_model.resolve import JobSettingsError, ResolvedTraining, resolve_training
from api.budget import parameters_over_budget, training_step_memory
from api.core import jobstore as job_ops
from api.core.artifacts import open_store
from api.core.broker import send_train_tasks
from api.core.db.models import (
    MAX_ROW_ID,
    TERMINAL_STATES,
    Checkpoint,
    Dataset,
    Job,
    JobEvent,
    JobState,
    Metric,
    utcnow,
)
from api.core.job_spec import CheckpointStart, JobCreate, ModelWeightsStart
from api.core.model_refs import ModelCfg, ModelNotFoundError, model_ref, resolve_model
from api.core.settings import Settings
from api.schemas.common import Page
from api.schemas.jobs import (
    CheckpointFile,
    CheckpointPublic,
    JobEventPublic,
    JobPublic,
    MetricPublic,
)
from api.services.errors import Conflict, NotFound, OverLimit, Unavailable, invalid_field

# Rows of a job's metric history one poll of its live stream reads at most.
STREAM_ROWS = 5000
ACTIVE_STATES = (JobState.queued, JobState.running)


def get_job(session: Session, tenant_id: int, job_id: int) -> Job:
    """The tenant's job; NotFound also for other tenants' jobs (their existence is private)."""
    job = None
    if 0 < job_id <= MAX_ROW_ID:
        job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def _model(session: Session, tenant_id: int, model: str | int) -> ModelCfg:
    """The cfg a job names: an uploaded model of the tenant (by id) or a bundled cfg (by name)."""
    try:
        return resolve_model(session, tenant_id, model)
    except ModelNotFoundError as error:
        raise invalid_field(["model"], str(error)) from error


@dataclass(frozen=True)
class _Resolution:
    """A job's resolution against its cfg and dataset within this server's budgets: jobs of
    equal ``key`` resolve alike; the other fields are where the values come from."""

    key: tuple[Any, ...]
    model: ModelCfg = field(compare=False)
    body: JobCreate = field(compare=False)
    dataset: Dataset = field(compare=False)
    settings: Settings = field(compare=False)


def _resolution(
    model: ModelCfg, body: JobCreate, dataset: Dataset, settings: Settings
) -> _Resolution:
    budgets = settings.max_bflops, settings.max_params_m, settings.max_train_memory_gib
    key = (
        model.text, model.source, body.model_dump_json(include={"train", "ae"}),
        dataset.num_train, len(dataset.class_names), budgets,
    )  # fmt: skip
    return _Resolution(key, model, body, dataset, settings)


# Submissions repeat a few cfgs and settings, and resolving one (layer tables at two sizes,
# parsing an uploaded cfg) cost a fifth of a submission's CPU. ResolvedTraining is frozen:
# requests share it. Refusals raise, so they are not kept. Few are kept: an entry holds its
# cfg's text, parse and layer table, up to about 4 MiB at the parser's limits (2,000
# sections: 2 MiB measured with tracemalloc; 2 M characters of text).
@lru_cache(maxsize=16)
def _resolved_within_budgets(job: _Resolution) -> ResolvedTraining:
    """The job as the Trainer will train it; Invalid unless the cfg parses, the Trainer can
    run the settings and the network fits the budgets."""
    body, dataset = job.body, job.dataset
    try:
        cfg = job.model.parse()
    except CfgError as error:
        raise invalid_field(["model"], str(error)) from error
    try:
        resolved = resolve_training(
            cfg, body.train.options(), train_images=dataset.num_train,
            num_classes=len(dataset.class_names) or None,
            ae=body.ae.config() if body.ae is not None else None,
        )  # fmt: skip
    except JobSettingsError as error:
        raise invalid_field(list(error.loc), str(error)) from error
    _check_budgets(resolved, job.settings)
    return resolved


def _check_budgets(resolved: ResolvedTraining, settings: Settings) -> None:
    """Invalid when the network, as it trains (heads retargeted to the dataset), does not fit
    its largest multi-scale size or passes the compute, parameter or training-memory budget."""
    width, height = resolved.width, resolved.height
    try:
        memory = training_step_memory(resolved)
    except CfgError as error:
        raise invalid_field(["train", "width"], f"at {width}x{height}: {error}") from error
    rows = resolved.layers
    total = sum(row.bflops for row in rows)
    if total > settings.max_bflops:
        raise invalid_field(
            ["model"],
            f"the network needs {total:.0f} BFLOPs per image at {width}x{height}, over this "
            f"server's budget of {settings.max_bflops:g}; train at a smaller size or a smaller cfg",
        )
    too_many = parameters_over_budget(rows, settings.max_params_m)
    if too_many:
        raise invalid_field(["model"], too_many)
    too_large = memory.over_budget(settings.max_train_memory_gib)
    if too_large:
        raise invalid_field(["train"], too_large)


def check_job_spec(
    session: Session, tenant_id: int, body: JobCreate, settings: Settings
) -> ResolvedTraining:
    """The job resolved against its cfg and dataset, as the Trainer will train it; Invalid
    unless the dataset is the tenant's and ready (with a test split for a job evaluating its
    best checkpoint), the model exists, the Trainer can run the settings, and the network fits
    this server's budgets."""
    dataset = session.scalar(
        select(Dataset).where(Dataset.id == body.dataset_id, Dataset.tenant_id == tenant_id)
    )
    return _check_against(session, tenant_id, body, settings, dataset)


def _check_against(
    session: Session, tenant_id: int, body: JobCreate, settings: Settings, dataset: Dataset | None
) -> ResolvedTraining:
    """``check_job_spec`` with the tenant's ``dataset`` of ``body.dataset_id`` (None: none)
    already read."""
    if dataset is None:
        raise invalid_field(["dataset_id"], f"no dataset {body.dataset_id}; see GET /v1/datasets")
    if dataset.status != "ready":
        raise invalid_field(["dataset_id"], f"dataset {dataset.id} is {dataset.status}, not ready")
    if body.evaluate.checkpoint == "best" and not dataset.num_test:
        # Its val AP chose the best checkpoint and is biased upward: only test images are fair.
        raise invalid_field(
            ["evaluate", "checkpoint"],
            f"the best checkpoint is chosen on val and must be evaluated on a test split, and "
            f'dataset {dataset.id} has none: generate a dataset with "test": N images or '
            "upload one with a test split (docs/data.md), or evaluate the last checkpoint",
        )
    model = _model(session, tenant_id, body.model)
    resolved = _resolved_within_budgets(_resolution(model, body, dataset, settings))
    _check_start(session, tenant_id, body, model)
    return resolved


def _check_start(session: Session, tenant_id: int, body: JobCreate, model: ModelCfg) -> None:
    """Invalid unless the job's start weights exist: the uploaded .weights of ``model`` (the
    cfg ``body`` names), or a checkpoint of a finished job of the tenant."""
    start = body.init
    if isinstance(start, ModelWeightsStart):
        if model.upload is None or model.upload.weights is None:
            raise invalid_field(
                ["init", "source"],
                f"model {model.ref} has no weights; upload them (POST /v1/models/{{id}}/weights "
                "for an uploaded cfg) or start from a job's checkpoint",
            )
    elif isinstance(start, CheckpointStart):
        job = session.scalar(select(Job).where(Job.id == start.job_id, Job.tenant_id == tenant_id))
        if job is None:
            raise invalid_field(["init", "job_id"], f"no job {start.job_id}; see GET /v1/jobs")
        if job.state not in TERMINAL_STATES:
            raise invalid_field(
                ["init", "job_id"],
                f"job {job.id} is {job.state}; start from it once it has finished",
            )
        name = f"{start.checkpoint}.pt"
        if (
            session.scalar(
                select(Checkpoint.id).where(Checkpoint.job_id == job.id, Checkpoint.name == name)
            )
            is None
        ):
            raise invalid_field(
                ["init", "checkpoint"],
                f"job {job.id} has no {start.checkpoint} checkpoint; see "
                f"GET /v1/jobs/{job.id}/checkpoints",
            )


def queued_row(
    fields: dict[str, Any], resolved: ResolvedTraining, message: str
) -> tuple[dict[str, Any], list[str]]:
    """A new queued job as ``jobstore.add_queued_jobs`` inserts it: ``fields`` with its
    resolved settings, and its messages, ``message`` then what resolution did or warns about
    (a schedule scaled to the run, a burn-in never left)."""
    fields = {**fields, "resolved": resolved.as_dict(), "max_batches": resolved.max_batches}
    notes = [f"note: {note}" for note in resolved.notes]
    warnings = [f"warning: {warning}" for warning in resolved.warnings]
    return fields, [message, *notes, *warnings]


def enqueue(celery: Celery, session: Session, queued: Sequence[Job]) -> None:
    """Send each job's task by name; if the broker is unreachable the jobs fail with a reason
    and the caller gets Unavailable (a job is never left queued with no task)."""
    try:
        send_train_tasks(celery, [(job.id, job.queue) for job in queued])
    except Exception as error:  # the broker's client raises many kinds; all mean "not queued"
        for job in queued:
            job_ops.finish_job(
                session, job.id, JobState.failed,
                failure_reason=f"could not reach the task broker: {error}; submit it again",
            )  # fmt: skip
        raise Unavailable("the task broker is unreachable; try again") from error


def check_active_jobs(session: Session, tenant_id: int, settings: Settings, adding: int) -> None:
    """OverLimit when ``adding`` more jobs would pass the tenant's limit of queued + running
    jobs."""
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant_id, Job.state.in_(ACTIVE_STATES))
    )
    refuse_over_limit(active or 0, settings, adding)


def refuse_over_limit(active: int, settings: Settings, adding: int) -> None:
    limit = settings.max_active_jobs
    if active + adding > limit:
        raise OverLimit(
            f"you have {active} jobs queued or running and may have {limit} at once; this "
            f"request adds {adding}. Wait for some to finish or cancel them"
        )


def submitted_row(
    session: Session, tenant_id: int, settings: Settings, body: JobCreate, dataset: Dataset | None
) -> tuple[dict[str, Any], list[str]]:
    """``body`` checked (``check_job_spec``, with the tenant's ``dataset`` of
    ``body.dataset_id`` already read, None: none) and made the row of a queued job
    (``queued_row``), for ``jobstore.add_queued_jobs``. The tenant's limit of active jobs is
    the caller's to check, after this (``api.services.job_writer``)."""
    resolved = _check_against(session, tenant_id, body, settings, dataset)
    fields = {
        "tenant_id": tenant_id, "spec": body.model_dump(mode="json"), "queue": body.queue,
        "seed": body.seed, "sent_at": utcnow(),  # its task is sent right after the commit
    }  # fmt: skip
    return queued_row(fields, resolved, "submitted")


def list_jobs(
    session: Session, tenant_id: int, state: JobState | None, limit: int, offset: int
) -> Page[JobPublic]:
    """The tenant's jobs (in ``state``, if given), newest first."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if state is not None:
        query = query.where(Job.state == state)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
    return Page(data=[JobPublic.model_validate(r) for r in rows], count=count)


def read_job(session: Session, tenant_id: int, job_id: int) -> JobPublic:
    return JobPublic.model_validate(get_job(session, tenant_id, job_id))


def cancel_job(session: Session, tenant_id: int, job_id: int) -> JobPublic:
    """A queued job is cancelled at once; a running one is asked to stop. Conflict when the
    job already ended."""
    job = get_job(session, tenant_id, job_id)
    if job.state in TERMINAL_STATES:
        raise Conflict(f"job {job_id} already {job.state}")
    job_ops.request_cancel(session, job_id)
    session.refresh(job)
    return JobPublic.model_validate(job)


def delete_job_rows(session: Session, doomed: Sequence[Job]) -> None:
    """Delete the rows of finished jobs, with their metrics, events and checkpoints (the
    foreign keys cascade), uncommitted; Conflict, deleting nothing, while any of them is
    queued or running. Their folders go once the caller has committed
    (``remove_job_folders``), so a failed commit leaves every file in place."""
    active = [job.id for job in doomed if job.state in ACTIVE_STATES]
    if active:
        raise Conflict(
            f"job(s) {active} are queued or running; cancel them (POST /v1/jobs/{{id}}/cancel) "
            "and delete once they have stopped"
        )
    ids = [job.id for job in doomed]
    # Finished is final, so the condition only guards against a row that changed meanwhile.
    gone = session.execute(delete(Job).where(Job.id.in_(ids), Job.state.in_(TERMINAL_STATES)))
    if gone.rowcount != len(ids):  # type: ignore[attr-defined]
        session.rollback()
        raise Conflict(f"job(s) {ids} changed while being deleted; try again")


def remove_job_folders(settings: Settings, job_ids: Sequence[int]) -> None:
    """Remove the artifact folders of deleted jobs (``jobs/<id>`` in the artifact store:
    checkpoints, .weights, .onnx, results); a folder already gone is fine."""
    store = open_store(settings)
    for job_id in job_ids:
        store.delete(f"jobs/{job_id}")


def delete_job(session: Session, tenant_id: int, settings: Settings, job_id: int) -> None:
    """Delete a finished job that is no comparison's, its rows and then its artifact folder;
    NotFound for another
    tenant's or a deleted job, Conflict for a comparison's (its statistics need every job)."""
    job = get_job(session, tenant_id, job_id)
    if job.comparison_id is not None:
        raise Conflict(
            f"job {job_id} is part of comparison {job.comparison_id}; delete the comparison "
            f"(DELETE /v1/comparisons/{job.comparison_id}), which deletes its jobs"
        )
    delete_job_rows(session, [job])
    session.commit()
    remove_job_folders(settings, [job_id])


def refuse_while_in_use(
    session: Session, tenant_id: int, field: str, value: int, what: str
) -> None:
    """Conflict while a queued or running job of the tenant names ``value`` in its spec's
    ``field`` (``dataset_id``, ``model``): a deletion of ``what`` must wait for them."""
    specs = session.execute(
        select(Job.id, Job.spec).where(Job.tenant_id == tenant_id, Job.state.in_(ACTIVE_STATES))
    ).all()
    active = [job_id for job_id, spec in specs if _ref(spec, field) == value]
    if active:
        raise Conflict(
            f"{what} is used by queued or running job(s) {active}; cancel them "
            "(POST /v1/jobs/{id}/cancel) or wait for them to finish, then delete it"
        )


def _ref(spec: dict[str, Any], field: str) -> str | int | None:
    value = spec.get(field)
    return model_ref(value) if isinstance(value, str | int) else None


def job_log(session: Session, tenant_id: int, job_id: int) -> Page[JobEventPublic]:
    """The job's state transitions, oldest first, in one page."""
    get_job(session, tenant_id, job_id)
    rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
    data = [JobEventPublic.model_validate(r) for r in rows]
    return Page(data=data, count=len(data))


def new_metrics(
    session: Session, tenant_id: int, job_id: int, after_id: int
) -> tuple[str, list[MetricPublic], int]:
    """The job's state, its metric rows stored after row ``after_id`` (at most STREAM_ROWS,
    in the order stored) and the id of the last of them (``after_id`` when none)."""
    job = get_job(session, tenant_id, job_id)
    rows = list(
        session.scalars(
            select(Metric)
            .where(Metric.job_id == job_id, Metric.id > after_id)
            .order_by(Metric.id)
            .limit(STREAM_ROWS)
        )
    )
    last_id = rows[-1].id if rows else after_id
    return job.state, [MetricPublic.model_validate(r) for r in rows], last_id


def list_checkpoints(session: Session, tenant_id: int, job_id: int) -> Page[CheckpointPublic]:
    """The job's checkpoints by name, each with its formats, in one page."""
    get_job(session, tenant_id, job_id)
    rows = session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.name)
    )
    grouped: dict[str, CheckpointPublic] = {}
    for row in rows:
        name, _, fmt = row.name.partition(".")
        entry = grouped.setdefault(
            name,
            CheckpointPublic(
                name=name,
                iteration=row.iteration,
                metrics=row.metrics,
                created_at=row.created_at,
                formats={},
            ),
        )
        entry.formats[fmt] = CheckpointFile(size=row.size, sha256=row.sha256)
    return Page(data=list(grouped.values()), count=len(grouped))


def checkpoint_path(
    session: Session, tenant_id: int, settings: Settings, job_id: int, name: str, fmt: str
) -> Path | str:
    """Where to get the job's checkpoint ``name`` in format ``fmt``: the file to stream (the
    local store) or a presigned URL to redirect to (an S3 store); NotFound while there is
    none. Rows hold paths relative to the artifact root: the files' keys in the store."""
    job = get_job(session, tenant_id, job_id)
    row = session.scalar(
        select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == f"{name}.{fmt}")
    )
    filename = f"job{job_id}-{name}.{fmt}"
    target = _download(settings, row.path, filename) if row is not None else None
    if target is None:
        if fmt == "onnx":
            raise _no_onnx_yet(job, name)
        raise NotFound(f"job {job_id} has no checkpoint {name}.{fmt}")
    return target


def _download(settings: Settings, key: str, filename: str) -> Path | str | None:
    """The store's file ``key`` for a client, as ``filename``; None when it is not there."""
    try:
        return open_store(settings).download(key, filename)
    except FileNotFoundError:
        return None


def _no_onnx_yet(job: Job, name: str) -> Conflict | NotFound:
    """Why checkpoint ``name`` of ``job`` has no ONNX file, and when it will: the worker
    exports ``last`` and ``best`` once training ends (an export takes seconds)."""
    when = "ONNX files are written for last and best when a job's training ends"
    if job.state not in TERMINAL_STATES:
        return Conflict(
            f"job {job.id} is {job.state}: its {name}.onnx does not exist yet; {when}. "
            f"Download format=pt or format=weights now, or this once the job has ended"
        )
    return NotFound(
        f"job {job.id} has no {name}.onnx; {when} without an error (GET /v1/jobs/{job.id}/log "
        "says why there is none). Convert its .pt with "
        "`aetrain export CHECKPOINT.pt --format onnx`"
    )
