"""model_configs.summary: what a listing shows of an uploaded cfg, stored at upload

A listing of models parsed every uploaded cfg on every request, so a tenant with large cfgs
made each listing seconds of CPU (issue 17, class 9). The parsed fields (classes, input size,
layers, BFLOPs, warnings) are now stored with the row. Rows uploaded before this migration keep
null and are parsed once, when first listed or read, and saved.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('model_configs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('summary', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_configs', schema=None) as batch_op:
        batch_op.drop_column('summary')
