"""Migration 0008: absolute artifact paths of older rows become relative to the artifact root."""

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import insert, select, update

from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import Checkpoint, Dataset, Job
from api.core.settings import get_settings
from api.migrate import alembic_config, upgrade

OLD_ROOT = "/srv/old-home/artifacts"


def _paths(url: str) -> tuple[dict[str, str], dict[str, str]]:
    """Checkpoint paths by name and dataset paths by name."""
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            checkpoints = dict(session.execute(select(Checkpoint.name, Checkpoint.path)).all())
            datasets = dict(session.execute(select(Dataset.name, Dataset.path)).all())
    finally:
        engine.dispose()
    return checkpoints, datasets


def _relative_paths(url: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upgrade(url, "0007")
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            tenant = Tenant(name="t")
            session.add(tenant)
            session.flush()
            job = Job(tenant_id=tenant.id, spec={})
            session.add(job)
            # Core inserts of the columns 0007 has: the model has gained columns since.
            added = {
                name: session.execute(
                    insert(Dataset).values(tenant_id=tenant.id, name=name, path=path)
                    .returning(Dataset.id)
                ).scalar_one()
                for name, path in (("zipped", ""), ("generated", ""), ("outside", "/data/shapes"))
            }  # fmt: skip
            zipped_id, generated_id = added["zipped"], added["generated"]
            for dataset_id, path in (
                (zipped_id, f"{OLD_ROOT}/datasets/{zipped_id}/pets"),
                (generated_id, f"{OLD_ROOT}/datasets/{generated_id}"),
            ):
                session.execute(update(Dataset).where(Dataset.id == dataset_id).values(path=path))
            session.flush()
            for name in ("last.pt", "last.weights"):
                session.add(Checkpoint(job_id=job.id, name=name, iteration=10, size=1, sha256="0",
                                       path=f"{OLD_ROOT}/jobs/{job.id}/{name}"))  # fmt: skip
            session.commit()
            job_id = job.id
    finally:
        engine.dispose()

    upgrade(url)
    checkpoints, datasets = _paths(url)
    assert checkpoints == {name: f"jobs/{job_id}/{name}" for name in ("last.pt", "last.weights")}
    assert datasets == {
        "zipped": f"datasets/{zipped_id}/pets",
        "generated": f"datasets/{generated_id}",
        "outside": "/data/shapes",
    }

    # Downgraded, they are absolute under the artifact root of the settings it runs with.
    monkeypatch.setenv("AETRAIN_HOME", str(home))
    get_settings.cache_clear()
    try:
        command.downgrade(alembic_config(url), "0007")
    finally:
        get_settings.cache_clear()
    checkpoints, datasets = _paths(url)
    assert checkpoints["last.pt"] == str(home / "artifacts" / "jobs" / str(job_id) / "last.pt")
    assert datasets["generated"] == str(home / "artifacts" / "datasets" / str(generated_id))
    assert datasets["outside"] == "/data/shapes"


def test_relative_artifact_paths_on_sqlite(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _relative_paths(sqlite_url, tmp_path / "home", monkeypatch)


@pytest.mark.postgres
def test_relative_artifact_paths_on_postgres(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _relative_paths(postgres_url, tmp_path / "home", monkeypatch)
