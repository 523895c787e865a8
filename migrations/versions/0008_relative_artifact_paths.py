"""checkpoints.path, datasets.path: relative to the artifact root

Rows held absolute paths, as the writing process's AETRAIN_HOME had them, so an API or worker
that mounts the artifact store elsewhere could not find the files. Paths are now relative to
the artifact root (``jobs/12/last.pt``, ``datasets/3/pets``) and each process joins them with
its own ``artifacts_dir``. A path of another form (a dataset outside the store) is left as it
is: joined with the root, an absolute path stays itself.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 03:00:00
"""

import re
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from api.core.settings import get_settings


revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

checkpoints = sa.table('checkpoints', sa.column('id', sa.Integer),
                       sa.column('job_id', sa.Integer), sa.column('path', sa.Text))
datasets = sa.table('datasets', sa.column('id', sa.Integer), sa.column('path', sa.Text))


def _rewrite(table: sa.TableClause, new_path: Callable[[sa.Row], str | None]) -> None:
    """Set each row's path to ``new_path(row)`` where that is not None."""
    connection = op.get_bind()
    for row in connection.execute(sa.select(table)).all():
        path = new_path(row)
        if path is not None:
            connection.execute(table.update().where(table.c.id == row.id).values(path=path))


def _relative_checkpoint(row: sa.Row) -> str | None:
    # <anything>/jobs/<id>/<file>: the last such part, as a file name has no slash.
    match = re.fullmatch(rf'/.*/(jobs/{row.job_id}/[^/]+)', row.path)
    return match[1] if match else None


def _relative_dataset(row: sa.Row) -> str | None:
    # <home>/artifacts/datasets/<id>[/<the zip's top folder>]: the first such part.
    match = re.fullmatch(rf'/.*?/artifacts/(datasets/{row.id}(?:/.*)?)', row.path)
    return match[1] if match else None


def upgrade() -> None:
    _rewrite(checkpoints, _relative_checkpoint)
    _rewrite(datasets, _relative_dataset)


def downgrade() -> None:
    # Absolute again, under the artifact root of the settings the downgrade runs with.
    root = get_settings().artifacts_dir

    def absolute(row: sa.Row) -> str | None:
        return None if row.path.startswith('/') else str(root / row.path)

    _rewrite(checkpoints, absolute)
    _rewrite(datasets, absolute)
