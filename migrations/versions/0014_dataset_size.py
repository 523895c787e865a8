"""datasets.size: the bytes a dataset takes on the artifact store

A tenant's usage (GET /v1/usage, the storage quota) counted datasets by walking their folders
on the API's disk; with an S3 artifact store (issue 21) the API holds no copy, so the size is
recorded when the dataset is stored. Rows stored before stay null and are counted on the store.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('size', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_column('size')
