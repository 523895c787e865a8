"""jobs.sent_at: when a job's task was last sent, so a task lost by the broker is sent again

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True))
    # A job queued now had its task sent when it was created (or re-queued since: later).
    jobs = sa.table('jobs', sa.column('state', sa.String), sa.column('created_at'), sa.column('sent_at'))
    op.execute(jobs.update().where(jobs.c.state == 'queued').values(sent_at=jobs.c.created_at))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('sent_at')
