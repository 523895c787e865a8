"""Migration 0013: datasets stored before it have no test split (num_test 0); it downgrades."""

import pytest
from alembic import command
from sqlalchemy import insert, inspect, select

from api.core.db import Tenant, make_engine
from api.core.db.models import Dataset
from api.migrate import alembic_config, upgrade


def _test_split_column(url: str) -> None:
    upgrade(url, "0012")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            # Core inserts of the model's tables name only the columns given or defaulted in
            # Python: what 0012 has.
            conn.execute(insert(Tenant).values(id=1, name="t"))
            conn.execute(insert(Dataset).values(id=1, tenant_id=1, name="old", path=""))
        upgrade(url)
        with engine.connect() as conn:
            assert conn.execute(select(Dataset.num_test)).scalar_one() == 0
        command.downgrade(alembic_config(url), "0012")
        assert "num_test" not in {c["name"] for c in inspect(engine).get_columns("datasets")}
        upgrade(url)
    finally:
        engine.dispose()


def test_dataset_test_split_on_sqlite(sqlite_url: str) -> None:
    _test_split_column(sqlite_url)


@pytest.mark.postgres
def test_dataset_test_split_on_postgres(postgres_url: str) -> None:
    _test_split_column(postgres_url)
