"""jobs(tenant_id, state): one index for a tenant's jobs in a state

Every submission counts the tenant's queued and running jobs against its limit. With separate
indexes on tenant_id and state, PostgreSQL either read all of the tenant's job history or all
tenants' active jobs for that count, whichever its statistics favoured at the time: a
submission's cost grew with history it does not need. The pair in one index reads only the
tenant's active jobs; it also serves every lookup the tenant_id index did, which it replaces.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 19:00:00
"""

from collections.abc import Sequence

from alembic import op


revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_jobs_tenant_state', 'jobs', ['tenant_id', 'state'])
    op.drop_index('ix_jobs_tenant_id', table_name='jobs')


def downgrade() -> None:
    op.create_index('ix_jobs_tenant_id', 'jobs', ['tenant_id'])
    op.drop_index('ix_jobs_tenant_state', table_name='jobs')
