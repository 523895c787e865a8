"""Training jobs: submit, list, inspect, cancel, delete, metrics (paged and streamed),
checkpoints."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.core.db.models import MAX_ROW_ID, TERMINAL_STATES, Job, JobState
from api.core.job_spec import JobCreate
from api.deps import PageReaderDep, SessionDep, SettingsDep, SubmitterDep, TenantDep
from api.metric_pages import (
    DEFAULT_PAGE_ROWS,
    DEFAULT_SINCE_STEP,
    MAX_PAGE_ROWS,
    MIN_PAGE_ROWS,
    MIN_SINCE_STEP,
    forget_jobs,
    metrics_page,
)
from api.routes import OneHopRoute
from api.schemas.common import UNAUTHORIZED, Page
from api.schemas.jobs import (
    SUBMIT_RESPONSES,
    CheckpointPublic,
    JobEventPublic,
    JobPublic,
    MetricPublic,
    MetricsPage,
)
from api.services import jobs

# Every route needs a key; every route with a job id answers 404 for another tenant's job.
router = APIRouter(
    route_class=OneHopRoute, prefix="/v1/jobs", tags=["jobs"], responses=UNAUTHORIZED
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such job of this tenant."}}

CHECKPOINT_FORMATS = {
    "pt": "application/octet-stream",
    "weights": "application/octet-stream",
    "onnx": "application/octet-stream",
}
SSE_POLL_SECONDS = 0.5
# A metrics event's id is its last metric row's id, a PostgreSQL bigint.
MAX_METRIC_ID = 2**63 - 1


def owned_job(job_id: int, session: SessionDep, tenant_id: TenantDep) -> Job:
    return jobs.get_job(session, tenant_id, job_id)


# Checked before a streaming response starts: a 404 cannot be sent once the stream is open.
OwnedJobDep = Annotated[Job, Depends(owned_job)]


@router.post(
    "",
    response_model=JobPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Submit a training job",
    responses=SUBMIT_RESPONSES,
)
async def create_job(
    body: JobCreate,
    request: Request,
    tenant_id: SubmitterDep,
) -> JobPublic:
    """Queue a training job. The model and dataset must exist; AE layers must exist in the cfg.

    The job trains on a worker consuming ``queue``; follow it with GET /v1/jobs/{id}, its
    metrics, or the SSE stream at /v1/jobs/{id}/events.
    """
    # Checked and stored with the submissions waiting with it (api.services.job_writer).
    job = await asyncio.wrap_future(request.app.state.job_writer.submit(tenant_id, body))
    return JobPublic.model_validate(job)


@router.get("", response_model=Page[JobPublic], summary="List jobs")
def list_jobs(
    session: SessionDep,
    tenant_id: TenantDep,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> Page[JobPublic]:
    """The tenant's jobs, newest first."""
    return jobs.list_jobs(session, tenant_id, state, limit, offset)


@router.get("/{job_id}", response_model=JobPublic, summary="Get a job", responses=NOT_FOUND)
def read_job(job_id: int, session: SessionDep, tenant_id: TenantDep) -> JobPublic:
    return jobs.read_job(session, tenant_id, job_id)


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    summary="Cancel a job",
    responses={**NOT_FOUND, 409: {"description": "The job already ended."}},
)
def cancel_job(job_id: int, session: SessionDep, tenant_id: TenantDep) -> JobPublic:
    """A queued job is cancelled at once; a running one stops at its next iteration boundary
    (within a few seconds), keeping its last checkpoint. A finished job answers 409."""
    return jobs.cancel_job(session, tenant_id, job_id)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a finished job",
    responses={
        **NOT_FOUND,
        409: {"description": "The job is queued or running, or part of a comparison."},
    },
)
def delete_job(
    job_id: int, request: Request, session: SessionDep, tenant_id: TenantDep, settings: SettingsDep
) -> None:
    """Delete a finished job: its metrics, log, checkpoints and artifact folder. A queued or
    running job answers 409 (cancel it first), and so does a comparison's job (delete the
    comparison). A deleted job answers 404, as does a second delete."""
    jobs.delete_job(session, tenant_id, settings, job_id)
    state = request.app.state
    forget_jobs(state.metrics_pages, state.settled_rows, tenant_id, {job_id})


@router.get(
    "/{job_id}/log",
    response_model=Page[JobEventPublic],
    summary="State transitions",
    responses=NOT_FOUND,
)
def job_log(job_id: int, session: SessionDep, tenant_id: TenantDep) -> Page[JobEventPublic]:
    """Every state transition of the job, oldest first, in one page."""
    return jobs.job_log(session, tenant_id, job_id)


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsPage,
    summary="Metric history, paged",
    responses=NOT_FOUND,
)
async def job_metrics(
    job_id: int,
    request: Request,
    tenant_id: PageReaderDep,
    keys: Annotated[
        str | None, Query(description="Comma-separated keys, e.g. loss,val/AP; default all.")
    ] = None,
    since_step: Annotated[
        int, Query(ge=MIN_SINCE_STEP, le=MAX_ROW_ID, description="Only steps after this one.")
    ] = DEFAULT_SINCE_STEP,
    limit: Annotated[int, Query(ge=MIN_PAGE_ROWS, le=MAX_PAGE_ROWS)] = DEFAULT_PAGE_ROWS,
) -> Response:
    """Metrics with ``step > since_step``, ordered by step; a page never splits a step.

    Training metrics are logged per iteration (loss, loss_box, loss_obj, loss_cls, lr,
    ae_alpha, images_per_s, data_wait, input_size, gpu_mem_mb on CUDA); evaluations as ``val/AP``,
    ``val/AP50``, ..., ``val/AR*``, ``val/AP_class/<category id>`` and ``val/latency_ms``.
    """
    # Pages that can no longer change (settled: see job_metrics_page) are built once per API
    # process and kept under the tenant; a job stays its tenant's, so such a page needs no
    # lookup of the job either. With the key remembered, api.kept_pages answers a query in its
    # plain form before routing, with the same metrics_page; others come here.
    key = (tenant_id, job_id, keys, since_step, limit)
    return Response(await metrics_page(request.app.state, key), media_type="application/json")


def _poll(
    request: Request, tenant_id: int, job_id: int, after_id: int
) -> tuple[str, list[MetricPublic], int]:
    # A short session per poll: the stream holds no connection between polls.
    with request.app.state.session_factory() as session:
        return jobs.new_metrics(session, tenant_id, job_id, after_id)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Live metrics (SSE)",
    responses=NOT_FOUND,
)
async def job_events(
    job_id: int,
    request: Request,
    tenant_id: TenantDep,
    _job: OwnedJobDep,
    last_event_id: Annotated[
        int,
        Header(
            ge=0,
            le=MAX_METRIC_ID,
            description="The id of the last `metrics` event received: resume after it.",
        ),
    ] = 0,
) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events: ``state`` when the job changes state, ``metrics`` with new rows,
    and ``end`` once the job has finished. Reconnect with ``Last-Event-ID`` to resume; an id
    that is not one this stream sent (not a number, or beyond 64 bits) is 422."""
    after_id = last_event_id
    last_state = None
    while True:
        state, rows, after_id = await anyio.to_thread.run_sync(
            _poll, request, tenant_id, job_id, after_id,
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
    response_model=Page[CheckpointPublic],
    summary="List checkpoints",
    responses=NOT_FOUND,
)
def list_checkpoints(
    job_id: int, session: SessionDep, tenant_id: TenantDep
) -> Page[CheckpointPublic]:
    """``last`` and ``best`` (those written so far), each with its formats, in one page."""
    return jobs.list_checkpoints(session, tenant_id, job_id)


@router.get(
    "/{job_id}/checkpoints/{name}",
    response_class=FileResponse,
    summary="Download a checkpoint",
    responses={
        200: {"content": {"application/octet-stream": {}}},
        404: {"description": "No such job of this tenant, or no such checkpoint yet."},
        307: {"description": "The file in the S3 artifact store: a presigned URL to fetch it."},
        409: {"description": "format=onnx of a job still training: written when it ends."},
    },
)
def download_checkpoint(
    job_id: int,
    name: str,
    session: SessionDep,
    tenant_id: TenantDep,
    settings: SettingsDep,
    format: Annotated[
        str,
        Query(
            pattern="^(pt|weights|onnx)$",
            description="pt, darknet weights, or onnx (written when the job's training ends)",
        ),
    ] = "pt",
) -> Response:
    """``last`` or ``best`` as a PyTorch checkpoint (``pt``), darknet ``.weights`` or ONNX
    (opset 18, the eval-mode network with decoded boxes, dynamic batch; docs/api.md). With
    an S3 artifact store, a redirect to a presigned URL of the file (docs/artifacts.md)."""
    target = jobs.checkpoint_path(session, tenant_id, settings, job_id, name, format)
    if isinstance(target, str):
        return RedirectResponse(target, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    return FileResponse(
        target, media_type=CHECKPOINT_FORMATS[format], filename=f"job{job_id}-{name}.{format}"
    )
