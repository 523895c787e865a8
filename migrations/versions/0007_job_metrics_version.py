"""jobs.metrics_version: counts the deletions of a job's stored metric rows (rollbacks)

The API keeps a metrics page it has built once no stored row it shows can change. A rollback
after a non-finite loss deletes a running job's rows after its last checkpoint and trains those
steps again; with this counter, bumped in the rollback's own transaction, pages of a job that
may roll back are kept under the version they were read at.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 04:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('metrics_version', sa.Integer(), nullable=False, server_default='0')
        )


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('metrics_version')
