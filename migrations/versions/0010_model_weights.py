"""model_configs.weights: darknet .weights uploaded for a cfg, to start jobs from

Darknet users start from pretrained backbones (darknet53.conv.74, yolov4-tiny.conv.29); a
tenant may now upload such a file for an uploaded cfg (issue 18). The column holds where the
file is on the artifact store and what was checked of it; null: no weights.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('model_configs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('weights', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_configs', schema=None) as batch_op:
        batch_op.drop_column('weights')
