"""comparisons.status, rounds, stop_reason, decided_at: seeds added in rounds until decided

A comparison may now ask for seeds until its paired difference is decided (issue 19): after
each job ends, ``api.core.comparison_rounds`` stops it or adds a round of seeds. ``rounds``
counts the rounds started (the conditional UPDATE that adds one bumps it, so concurrent
workers add a round once); ``status`` says whether it may still add seeds and
``stop_reason`` why it stopped. Comparisons made before have fixed seeds: those whose jobs
have all ended are ``finished``, the others ``running`` until their last job ends.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 09:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('status', sa.String(length=20), nullable=False, server_default='running')
        )
        batch_op.add_column(sa.Column('rounds', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('stop_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_comparisons_status'), ['status'], unique=False)
    op.execute(
        "UPDATE comparisons SET status = 'finished', "
        "stop_reason = 'every job ended (made before seeds could run in rounds)' "
        "WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.comparison_id = comparisons.id "
        "AND jobs.state IN ('queued', 'running'))"
    )


def downgrade() -> None:
    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_comparisons_status'))
        batch_op.drop_column('decided_at')
        batch_op.drop_column('stop_reason')
        batch_op.drop_column('rounds')
        batch_op.drop_column('status')
