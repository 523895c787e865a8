"""docker-compose.yml cannot be run here (no Docker engine), so its wiring is checked as data."""

import importlib
from pathlib import Path

import yaml
from fastapi import FastAPI

from tests.conftest import REPO_ROOT


def _compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_services_and_dependencies() -> None:
    services = _compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in env["DATABASE_URL"]
        assert env["CELERY_BROKER_URL"].startswith("redis://redis:6379")
        assert (
            services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        )
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]


def test_worker_reserves_a_gpu_and_shares_artifacts() -> None:
    services = _compose()["services"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert any(v.startswith("artifacts:") for v in services["worker"]["volumes"])
    assert services["worker"]["volumes"] == services["api"]["volumes"]


def test_build_and_commands_point_at_real_files() -> None:
    services = _compose()["services"]
    build = services["migrate"]["build"]
    assert (REPO_ROOT / build["context"] / build["dockerfile"]).is_file()
    # uvicorn calls the app factory: importing api.main builds no app.
    api = services["api"]["command"]
    assert api[:2] == ["uvicorn", "--factory"]
    module, attr = api[2].split(":")
    assert isinstance(getattr(importlib.import_module(module), attr)(), FastAPI)
    # Celery's -A looks up the module's `app`, which it builds on first use.
    assert services["worker"]["command"][:3] == ["celery", "-A", "worker.celery_app"]
    assert callable(importlib.import_module("worker.celery_app").create_worker_app)


def test_dockerfile_copies_every_package() -> None:
    dockerfile = (REPO_ROOT / "worker" / "Dockerfile").read_text()
    for package in ("ae_model", "api", "worker", "migrations"):
        assert f"COPY {package} {package}" in dockerfile
    assert Path(REPO_ROOT / "pyproject.toml").is_file()
