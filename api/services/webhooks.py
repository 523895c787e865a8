"""The tenant's webhook signing secret (made on first use, rotatable) and its deliveries."""

import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core.db.models import WebhookDelivery, WebhookSecret, utcnow
from api.core.db.session import dialect_insert
from api.schemas.common import Page
from api.schemas.webhooks import WebhookDeliveryPublic, WebhookSecretPublic


def tenant_secret(session: Session, tenant_id: int) -> WebhookSecret:
    """The tenant's signing secret, made now if it has none (uncommitted; of two requests
    making it at once, both get the one stored first)."""
    session.execute(
        dialect_insert(session)(WebhookSecret)
        .values(tenant_id=tenant_id, secret=secrets.token_hex(32), created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["tenant_id"])
    )
    return session.execute(
        select(WebhookSecret).where(WebhookSecret.tenant_id == tenant_id)
    ).scalar_one()


def read_secret(session: Session, tenant_id: int) -> WebhookSecretPublic:
    row = tenant_secret(session, tenant_id)
    session.commit()
    return WebhookSecretPublic.model_validate(row)


def rotate_secret(session: Session, tenant_id: int) -> WebhookSecretPublic:
    """Replace the tenant's secret: every delivery sent from now on, retries included, is
    signed with the new one."""
    row = tenant_secret(session, tenant_id)
    row.secret, row.created_at = secrets.token_hex(32), utcnow()
    session.commit()
    return WebhookSecretPublic.model_validate(row)


def list_deliveries(
    session: Session,
    tenant_id: int,
    job_id: int | None,
    comparison_id: int | None,
    limit: int,
    offset: int,
) -> Page[WebhookDeliveryPublic]:
    """The tenant's deliveries (of one job or comparison, if given), newest first."""
    query = select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)
    if job_id is not None:
        query = query.where(WebhookDelivery.job_id == job_id)
    if comparison_id is not None:
        query = query.where(WebhookDelivery.comparison_id == comparison_id)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit).offset(offset))
    data = [WebhookDeliveryPublic.model_validate(row) for row in rows]
    for delivery in data:
        if delivery.state != "pending":
            delivery.next_attempt_at = None
    return Page(data=data, count=count)
