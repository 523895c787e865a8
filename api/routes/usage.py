"""The tenant's stored bytes and quota (``api.services.usage``)."""

from fastapi import APIRouter

from api.deps import SessionDep, SettingsDep, TenantDep
from api.routes import OneHopRoute
from api.schemas.common import UNAUTHORIZED
from api.schemas.usage import UsagePublic
from api.services import usage

router = APIRouter(
    route_class=OneHopRoute, prefix="/v1/usage", tags=["usage"], responses=UNAUTHORIZED
)


@router.get("", response_model=UsagePublic, summary="Stored bytes and quota")
def read_usage(session: SessionDep, tenant_id: TenantDep, settings: SettingsDep) -> UsagePublic:
    """Bytes the tenant's datasets, models' start weights and jobs' checkpoints take on the
    artifact store, and the quota new datasets are checked against."""
    return usage.tenant_usage(session, tenant_id, settings)
