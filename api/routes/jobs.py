"""Training jobs: submit, list, inspect, cancel, metrics (paged and streamed), checkpoints."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ae_model.cfg import (
    CfgError,
    DarknetConfig,
    LayerRow,
    bundled_cfg_path,
    load_cfg,
    parse_cfg,
)
from api.budget import parameters_over_budget, training_step_memory
from api.core import jobstore as job_ops
from api.core.db.models import (
    TERMINAL_STATES,
    Checkpoint,
    Dataset,
    Job,
    JobEvent,
    JobState,
    Metric,
    ModelConfig,
    utcnow,
)
from api.core.job_spec import JobCreate, StrideSpec
from api.core.settings import Settings
from api.deps import SessionDep, TenantDep
from api.job_schemas import (
    CheckpointFile,
    CheckpointPublic,
    JobEventPublic,
    JobPublic,
    JobsPublic,
    MetricPublic,
    MetricsPage,
)
from api.metric_pages import job_metrics_page
from api.schemas import BAD_JSON, MAX_ROW_ID, UNAUTHORIZED
from worker.celery_app import send_train_task

# Every route needs a key; every route with a job id answers 404 for another tenant's job.
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=UNAUTHORIZED)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such job of this tenant."}}

CHECKPOINT_FORMATS = {"pt": "application/octet-stream", "weights": "application/octet-stream"}
SSE_POLL_SECONDS = 0.5


def _unprocessable(loc: list[str | int], message: str) -> HTTPException:
    # The same shape as FastAPI's own validation errors, so clients parse one format.
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        [{"loc": ["body", *loc], "msg": message, "type": "value_error"}],
    )


def get_job(session: Session, tenant_id: int, job_id: int) -> Job:
    """The tenant's job, or 404 (also for other tenants' jobs: their existence is private)."""
    job = None
    if 0 < job_id <= MAX_ROW_ID:
        job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


def owned_job(job_id: int, session: SessionDep, tenant_id: TenantDep) -> Job:
    return get_job(session, tenant_id, job_id)


# Checked before a streaming response starts: a 404 cannot be sent once the stream is open.
OwnedJobDep = Annotated[Job, Depends(owned_job)]


def _model_cfg(session: Session, tenant_id: int, model: str | int) -> DarknetConfig:
    """The cfg a job names: an uploaded model of the tenant (by id) or a bundled cfg (by name)."""
    try:
        if isinstance(model, int):
            row = session.scalar(
                select(ModelConfig).where(
                    ModelConfig.id == model, ModelConfig.tenant_id == tenant_id
                )
            )
            if row is None:
                raise _unprocessable(["model"], f"no uploaded model {model}; see GET /v1/models")
            return parse_cfg(row.cfg_text, row.name)
        return load_cfg(bundled_cfg_path(model))
    except CfgError as error:
        raise _unprocessable(["model"], str(error)) from error


def _check_size(spec: JobCreate, cfg: DarknetConfig, settings: Settings) -> list[LayerRow]:
    """The layer table at the training size; 422 when the network does not fit that size or
    passes the compute, parameter or training-memory budget."""
    width = spec.train.width or cfg.net.width
    height = spec.train.height or cfg.net.height
    try:
        rows = cfg.layer_table(width, height)
        memory = training_step_memory(cfg, spec.train)
    except CfgError as error:
        raise _unprocessable(["train", "width"], f"at {width}x{height}: {error}") from error
    total = sum(row.bflops for row in rows)
    if total > settings.max_bflops:
        raise _unprocessable(
            ["model"],
            f"the network needs {total:.0f} BFLOPs per image at {width}x{height}, over this "
            f"server's budget of {settings.max_bflops:g}; train at a smaller size or a smaller cfg",
        )
    too_many = parameters_over_budget(rows, settings.max_params_m)
    if too_many:
        raise _unprocessable(["model"], too_many)
    if memory.batch % memory.subdivisions:  # one of them comes from the cfg's [net]
        raise _unprocessable(
            ["train", "batch"],
            f"batch={memory.batch} must be divisible by subdivisions={memory.subdivisions} "
            "(the cfg's unless train sets it); set train.batch and train.subdivisions together",
        )
    world = spec.train.world_size
    if memory.subdivisions % world:  # subdivisions may come from the cfg's [net]
        raise _unprocessable(
            ["train", "world_size"],
            f"world_size={world} processes share each iteration's subdivisions="
            f"{memory.subdivisions} micro-batches: set train.subdivisions to a multiple of "
            f"{world} (and batch to a multiple of that)",
        )
    too_large = memory.over_budget(settings.max_train_memory_gib)
    if too_large:
        raise _unprocessable(["train"], too_large)
    return rows


def _check_ae(spec: JobCreate, cfg: DarknetConfig, rows: list[LayerRow]) -> None:
    """AE layers must exist; a stride must be one the network has (at the training size)."""
    if spec.ae is None:
        return
    layers = spec.ae.layers
    count = len(cfg.sections)
    if isinstance(layers, StrideSpec):
        strides = sorted({row.out_stride for row in rows})
        if layers.stride not in strides:
            shown = ", ".join(f"{stride:g}" for stride in strides)
            raise _unprocessable(
                ["ae", "layers", "stride"],
                f"no layer has output stride {layers.stride}; this network has strides {shown}",
            )
        return
    for index in [layers] if isinstance(layers, int) else layers:
        if index >= count:
            raise _unprocessable(
                ["ae", "layers"], f"layer {index} does not exist: the cfg has layers 0..{count - 1}"
            )


def check_job_spec(session: Session, tenant_id: int, body: JobCreate, settings: Settings) -> None:
    """422 unless the dataset is the tenant's and ready, the model exists, fits the training
    size and this server's budgets, and AE fits it."""
    dataset = session.scalar(
        select(Dataset).where(Dataset.id == body.dataset_id, Dataset.tenant_id == tenant_id)
    )
    if dataset is None:
        raise _unprocessable(["dataset_id"], f"no dataset {body.dataset_id}; see GET /v1/datasets")
    if dataset.status != "ready":
        raise _unprocessable(["dataset_id"], f"dataset {dataset.id} is {dataset.status}, not ready")
    cfg = _model_cfg(session, tenant_id, body.model)
    _check_ae(body, cfg, _check_size(body, cfg, settings))


def enqueue(celery: Any, session: Session, queued: Sequence[Job]) -> None:
    """Send each job's task by name; if the broker is unreachable the jobs fail with a reason
    and the caller gets 503 (a job is never left queued with no task)."""
    try:
        for job in queued:
            send_train_task(celery, job.id, job.queue)
    except Exception as error:  # the broker's client raises many kinds; all mean "not queued"
        for job in queued:
            job_ops.finish_job(
                session, job.id, JobState.failed,
                failure_reason=f"could not reach the task broker: {error}; submit it again",
            )  # fmt: skip
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the task broker is unreachable; try again"
        ) from error


def check_active_jobs(request: Request, session: Session, tenant_id: int, adding: int) -> None:
    """429 when ``adding`` more jobs would pass the tenant's limit of queued + running jobs."""
    limit = request.app.state.settings.max_active_jobs
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant_id, Job.state.in_([JobState.queued, JobState.running]))
    )
    if (active or 0) + adding > limit:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"you have {active} jobs queued or running and may have {limit} at once; this "
            f"request adds {adding}. Wait for some to finish or cancel them",
        )


SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **BAD_JSON,
    429: {"description": "The tenant's jobs queued or running would pass AETRAIN_MAX_ACTIVE_JOBS."},
    503: {"description": "The task broker is unreachable; the job is recorded as failed."},
}


@router.post(
    "",
    response_model=JobPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Submit a training job",
    responses=SUBMIT_RESPONSES,
)
def create_job(body: JobCreate, request: Request, session: SessionDep, tenant_id: TenantDep) -> Job:
    """Queue a training job. The model and dataset must exist; AE layers must exist in the cfg.

    The job trains on a worker consuming ``queue``; follow it with GET /v1/jobs/{id}, its
    metrics, or the SSE stream at /v1/jobs/{id}/events.
    """
    check_job_spec(session, tenant_id, body, request.app.state.settings)
    check_active_jobs(request, session, tenant_id, 1)
    job = Job(
        tenant_id=tenant_id, spec=body.model_dump(mode="json"), queue=body.queue, seed=body.seed,
        sent_at=utcnow(),  # its task is sent right after the row is committed
    )  # fmt: skip
    session.add(job)
    session.flush()
    job_ops.add_event(session, job.id, JobState.queued, "submitted")
    session.commit()
    enqueue(request.app.state.celery, session, [job])
    session.refresh(job)
    return job


@router.get("", response_model=JobsPublic, summary="List jobs")
def list_jobs(
    session: SessionDep,
    tenant_id: TenantDep,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> JobsPublic:
    """The tenant's jobs, newest first."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if state is not None:
        query = query.where(Job.state == state)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
    return JobsPublic(data=[JobPublic.model_validate(r) for r in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic, summary="Get a job", responses=NOT_FOUND)
def read_job(job_id: int, session: SessionDep, tenant_id: TenantDep) -> Job:
    return get_job(session, tenant_id, job_id)


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    summary="Cancel a job",
    responses={**NOT_FOUND, 409: {"description": "The job already ended."}},
)
def cancel_job(job_id: int, session: SessionDep, tenant_id: TenantDep) -> Job:
    """A queued job is cancelled at once; a running one stops at its next iteration boundary
    (within a few seconds), keeping its last checkpoint. A finished job answers 409."""
    job = get_job(session, tenant_id, job_id)
    if job.state in TERMINAL_STATES:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} already {job.state}")
    job_ops.request_cancel(session, job_id)
    session.refresh(job)
    return job


@router.get(
    "/{job_id}/log",
    response_model=list[JobEventPublic],
    summary="State transitions",
    responses=NOT_FOUND,
)
def job_log(job_id: int, session: SessionDep, tenant_id: TenantDep) -> list[JobEvent]:
    get_job(session, tenant_id, job_id)
    return list(
        session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
    )


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsPage,
    summary="Metric history, paged",
    responses=NOT_FOUND,
)
async def job_metrics(
    job_id: int,
    request: Request,
    session: SessionDep,
    tenant_id: TenantDep,
    keys: Annotated[
        str | None, Query(description="Comma-separated keys, e.g. loss,val/AP; default all.")
    ] = None,
    since_step: Annotated[
        int, Query(ge=-1, le=MAX_ROW_ID, description="Only steps after this one.")
    ] = -1,
    limit: Annotated[int, Query(ge=50, le=10_000)] = 1000,
) -> Response:
    """Metrics with ``step > since_step``, ordered by step; a page never splits a step.

    Training metrics are logged per iteration (loss, loss_box, loss_obj, loss_cls, lr,
    ae_alpha, images_per_s, data_wait, input_size, gpu_mem_mb on CUDA); evaluations as ``val/AP``,
    ``val/AP50``, ..., ``val/AR*``, ``val/AP_class/<category id>`` and ``val/latency_ms``.
    """
    # Pages that can no longer change (settled: see job_metrics_page) are built once per API
    # process and kept under the tenant; a job stays its tenant's, so such a page needs no
    # lookup of the job either.
    state = request.app.state
    key = (tenant_id, job_id, keys, since_step, limit)
    kept = state.metrics_pages.get(key)
    if kept is None:
        kept = await run_in_threadpool(
            job_metrics_page, session, state.metrics_pages, state.settled_rows, key,
            state.settings.live_page_s,
        )  # fmt: skip
    return Response(kept, media_type="application/json")


def _stream_state(
    request: Request, tenant_id: int, job_id: int, after_id: int
) -> tuple[str, list[MetricPublic], int]:
    with request.app.state.session_factory() as session:
        job = get_job(session, tenant_id, job_id)
        rows = list(
            session.scalars(
                select(Metric)
                .where(Metric.job_id == job_id, Metric.id > after_id)
                .order_by(Metric.id)
                .limit(5000)
            )
        )
        last_id = rows[-1].id if rows else after_id
        return job.state, [MetricPublic.model_validate(r) for r in rows], last_id


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Live metrics (SSE)",
    responses=NOT_FOUND,
)
async def job_events(
    job_id: int, request: Request, tenant_id: TenantDep, _job: OwnedJobDep
) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events: ``state`` when the job changes state, ``metrics`` with new rows,
    and ``end`` once the job has finished. Reconnect with ``Last-Event-ID`` to resume."""
    last_event = request.headers.get("last-event-id", "0")
    after_id = int(last_event) if last_event.isdigit() else 0
    last_state = None
    while True:
        state, rows, after_id = await anyio.to_thread.run_sync(
            _stream_state, request, tenant_id, job_id, after_id,
            limiter=request.app.state.stream_polls,
        )  # fmt: skip
        if state != last_state:
            last_state = state
            yield ServerSentEvent(event="state", data={"state": state})
        if rows:
            yield ServerSentEvent(
                event="metrics", id=str(after_id), data=[r.model_dump(mode="json") for r in rows]
            )
        if state in TERMINAL_STATES and not rows:
            yield ServerSentEvent(event="end", data={"state": state})
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(SSE_POLL_SECONDS)


@router.get(
    "/{job_id}/checkpoints",
    response_model=list[CheckpointPublic],
    summary="List checkpoints",
    responses=NOT_FOUND,
)
def list_checkpoints(
    job_id: int, session: SessionDep, tenant_id: TenantDep
) -> list[CheckpointPublic]:
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
    return list(grouped.values())


@router.get(
    "/{job_id}/checkpoints/{name}",
    response_class=FileResponse,
    summary="Download a checkpoint",
    responses={
        200: {"content": {"application/octet-stream": {}}},
        404: {"description": "No such job of this tenant, or no such checkpoint yet."},
    },
)
def download_checkpoint(
    job_id: int,
    name: str,
    session: SessionDep,
    tenant_id: TenantDep,
    format: Annotated[
        str, Query(pattern="^(pt|weights)$", description="pt or darknet weights")
    ] = "pt",
) -> Any:
    """``last`` or ``best`` as a PyTorch checkpoint (``pt``) or darknet ``.weights``."""
    get_job(session, tenant_id, job_id)
    row = session.scalar(
        select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == f"{name}.{format}")
    )
    if row is None or not Path(row.path).is_file():
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"job {job_id} has no checkpoint {name}.{format}"
        )
    return FileResponse(
        row.path, media_type=CHECKPOINT_FORMATS[format], filename=f"job{job_id}-{name}.{format}"
    )
