"""Webhooks: the tenant's signing secret and the deliveries made (docs/webhooks.md)."""

from typing import Annotated

from fastapi import APIRouter, Query

from api.core.db.models import MAX_ROW_ID
from api.deps import SessionDep, TenantDep
from api.routes import OneHopRoute
from api.schemas.common import UNAUTHORIZED, Page
from api.schemas.webhooks import WebhookDeliveryPublic, WebhookSecretPublic
from api.services import webhooks

router = APIRouter(
    route_class=OneHopRoute, prefix="/v1/webhooks", tags=["webhooks"], responses=UNAUTHORIZED
)


@router.get("/secret", response_model=WebhookSecretPublic, summary="The signing secret")
def read_secret(session: SessionDep, tenant_id: TenantDep) -> WebhookSecretPublic:
    """The key the tenant's webhook bodies are signed with; made on first use."""
    return webhooks.read_secret(session, tenant_id)


@router.post(
    "/secret/rotate", response_model=WebhookSecretPublic, summary="Replace the signing secret"
)
def rotate_secret(session: SessionDep, tenant_id: TenantDep) -> WebhookSecretPublic:
    """A new key; deliveries sent from now on (retries too) are signed with it only."""
    return webhooks.rotate_secret(session, tenant_id)


@router.get(
    "/deliveries", response_model=Page[WebhookDeliveryPublic], summary="List webhook deliveries"
)
def list_deliveries(
    session: SessionDep,
    tenant_id: TenantDep,
    job_id: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    comparison_id: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> Page[WebhookDeliveryPublic]:
    """The tenant's webhook calls, newest first, with attempts, the last status code or
    error, and when the next attempt is due."""
    return webhooks.list_deliveries(session, tenant_id, job_id, comparison_id, limit, offset)
