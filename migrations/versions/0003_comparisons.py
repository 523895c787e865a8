"""comparisons

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 03:27:06.398641
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('comparisons',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_comparisons_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_comparisons'))
    )
    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_comparisons_tenant_id'), ['tenant_id'], unique=False)

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('comparison_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('arm', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('seed', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_comparison_id'), ['comparison_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_jobs_comparison_id_comparisons'), 'comparisons', ['comparison_id'], ['id'], ondelete='CASCADE')



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_jobs_comparison_id_comparisons'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_jobs_comparison_id'))
        batch_op.drop_column('seed')
        batch_op.drop_column('arm')
        batch_op.drop_column('comparison_id')

    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_comparisons_tenant_id'))

    op.drop_table('comparisons')
