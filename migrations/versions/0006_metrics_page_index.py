"""metrics: index (job_id, step, key), the order metric pages are read in

A page reads a job's rows ordered by step and key with a limit. With the index on (job_id, step)
alone, PostgreSQL picked that plan only when its statistics knew how many rows the job has; a
job whose rows were written since the last ANALYZE (every running job) had all its rows sorted
for each page. The full order in the index makes the cheap plan the only sensible one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 01:20:00
"""

from collections.abc import Sequence

from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.drop_index('ix_metrics_job_step')
        batch_op.create_index('ix_metrics_job_step_key', ['job_id', 'step', 'key'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.drop_index('ix_metrics_job_step_key')
        batch_op.create_index('ix_metrics_job_step', ['job_id', 'step'], unique=False)
