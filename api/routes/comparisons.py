"""Comparisons: arms x seeds of jobs, paired statistics, verdict and plot; deleting one."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from api.core.db.models import MAX_ROW_ID
from api.core.job_spec import ComparisonCreate
from api.deps import HeavyDep, HeavyTenantDep, SessionDep, SessionsDep, SettingsDep, TenantDep
from api.metric_pages import forget_jobs
from api.routes import OneHopRoute
from api.schemas.common import TENANT_BUSY, UNAUTHORIZED, Page
from api.schemas.comparisons import ComparisonPublic
from api.schemas.jobs import SUBMIT_RESPONSES
from api.services import comparisons

router = APIRouter(
    route_class=OneHopRoute, prefix="/v1/comparisons", tags=["comparisons"], responses=UNAUTHORIZED
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such comparison of this tenant."}
}


@router.post(
    "",
    response_model=ComparisonPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Compare arms (e.g. baseline vs AE) over several seeds",
    responses=SUBMIT_RESPONSES,
)
def create_comparison(
    body: ComparisonCreate,
    request: Request,
    session: SessionDep,
    tenant_id: TenantDep,
    settings: SettingsDep,
) -> ComparisonPublic:
    """Creates one job per arm and seed. Each arm is the base job with the arm's overrides;
    a seed fixes initial weights, data order and augmentation identically in every arm."""
    celery = request.app.state.celery
    return comparisons.create_comparison(session, tenant_id, settings, celery, body)


@router.get("", response_model=Page[ComparisonPublic], summary="List comparisons")
def list_comparisons(
    session: SessionDep,
    tenant_id: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> Page[ComparisonPublic]:
    return comparisons.list_comparisons(session, tenant_id, limit, offset)


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
    return comparisons.read_comparison(session, tenant_id, comparison_id)


@router.get(
    "/{comparison_id}/plot.png",
    response_class=Response,
    summary="Plot: metric per seed per arm, paired differences, learning curves",
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND, **TENANT_BUSY},
)
async def comparison_plot(
    comparison_id: int, sessions: SessionsDep, tenant_id: HeavyTenantDep, heavy: HeavyDep
) -> Response:
    """Rendered for each request, a heavy request (429 past the tenant's limit)."""
    png = await heavy.run(lambda: comparisons.plot_png(sessions, tenant_id, comparison_id))
    return Response(png, media_type="image/png")


@router.delete(
    "/{comparison_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a comparison and its jobs",
    responses={**NOT_FOUND, 409: {"description": "One of its jobs is queued or running."}},
)
def delete_comparison(
    comparison_id: int,
    request: Request,
    session: SessionDep,
    tenant_id: TenantDep,
    settings: SettingsDep,
) -> None:
    """Delete the comparison and every job of it (metrics, logs, checkpoints, artifact
    folders). While one of its jobs is queued or running it answers 409: cancel them first.
    A second delete answers 404."""
    deleted = comparisons.delete_comparison(session, tenant_id, settings, comparison_id)
    state = request.app.state
    forget_jobs(state.metrics_pages, state.settled_rows, tenant_id, set(deleted))
