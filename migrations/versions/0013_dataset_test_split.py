"""datasets.num_test: the images of a dataset's optional test split

A job may now evaluate its best checkpoint (on val) on a held-out test split (issue 19); the
API refuses one whose dataset has none, and with an S3 store it cannot look at the files, so
the count is recorded with the dataset. Datasets stored before were checked without a test
split: they have none (0).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('num_test', sa.Integer(), nullable=False, server_default='0')
        )


def downgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_column('num_test')
