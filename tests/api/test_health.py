from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ae_model import __version__
from api.core.settings import Settings
from api.main import create_app


def test_health_reports_version(client: TestClient) -> None:
    response = client.get("/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": __version__}


def test_refuses_to_start_on_an_unmigrated_database(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(RuntimeError, match="aetrain db upgrade"), TestClient(create_app(settings)):
        pass
