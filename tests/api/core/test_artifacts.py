"""The artifact store's two implementations, the directory and S3 (against moto's S3 server
on loopback), answer the same operations the same way; and a malformed AETRAIN_ARTIFACTS_URL
is refused at start."""

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.core.artifacts import ArtifactStore, LocalStore, S3Store, open_store, parse_s3_url
from api.core.settings import Settings
from api.main import create_app
from api.migrate import upgrade
from tests.api.conftest import _key
from tests.api.core.s3_server import BUCKET, S3Server, s3_server
from tests.api.routes.test_model_weights import CUTOFF, _upload, _upload_cfg, _weights
from tests.conftest import REPO_ROOT

__all__ = ["s3_server"]  # the fixture, for pytest


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    url = None
    if request.param == "s3":
        request.getfixturevalue("s3_server")
        url = f"s3://{BUCKET}/{uuid.uuid4().hex}"  # the server is the module's
    yield open_store(Settings(home=tmp_path / "home", artifacts_url=url))


def _file(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_files_are_put_read_sized_and_deleted(store: ArtifactStore, tmp_path: Path) -> None:
    assert not store.exists("jobs/1/last.pt") and store.size("jobs/1") == 0
    store.put_file("jobs/1/last.pt", _file(tmp_path, "a", b"first"))
    store.put_file("jobs/1/last.weights", _file(tmp_path, "b", b"weights!"))
    store.put_file("jobs/10/last.pt", _file(tmp_path, "c", b"another job"))
    assert store.exists("jobs/1/last.pt") and store.exists("jobs/1")
    assert store.size("jobs/1/last.pt") == 5 and store.size("jobs/1") == 5 + 8
    store.put_file("jobs/1/last.pt", _file(tmp_path, "a", b"replaced"))
    store.get_file("jobs/1/last.pt", tmp_path / "down" / "last.pt")
    assert (tmp_path / "down" / "last.pt").read_bytes() == b"replaced"
    with pytest.raises(FileNotFoundError, match=re.escape("jobs/2/last.pt")):
        store.get_file("jobs/2/last.pt", tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    store.delete("jobs/1")  # the folder, not jobs/10 beside it
    assert not store.exists("jobs/1/last.pt") and store.size("jobs/1") == 0
    assert store.size("jobs/10") == len(b"another job")
    store.delete("jobs/1")  # nothing there is fine


def test_a_folder_is_stored_and_fetched_whole_and_again_when_replaced(
    store: ArtifactStore, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    (staging / "pets" / "images").mkdir(parents=True)
    (staging / "pets" / "images" / "1.jpg").write_bytes(b"jpeg")
    (staging / "pets" / "train.json").write_text("{}")
    store.put_tree("datasets/3", staging)
    assert store.size("datasets/3") == 4 + 2
    local = store.fetch("datasets/3/pets")
    assert (local / "images" / "1.jpg").read_bytes() == b"jpeg"
    assert (local / "train.json").read_text() == "{}"
    assert store.fetch("datasets/3/pets") == local  # read once, then from the cache
    (tmp_path / "new" / "pets").mkdir(parents=True)
    (tmp_path / "new" / "pets" / "train.json").write_text('{"v": 2}')
    store.put_tree("datasets/3", tmp_path / "new")  # an id reused: the old files go
    fresh = store.fetch("datasets/3/pets")
    assert (fresh / "train.json").read_text() == '{"v": 2}'
    assert not (fresh / "images").exists()
    with pytest.raises(FileNotFoundError):
        store.fetch("datasets/4")


def test_a_remote_store_caches_under_home_and_a_local_one_reads_in_place(
    store: ArtifactStore, tmp_path: Path
) -> None:
    store.put_file("models/2/start.weights", _file(tmp_path, "w", b"start"))
    local = store.fetch("models/2/start.weights")
    assert local.read_bytes() == b"start" and local.name == "start.weights"
    home = tmp_path / "home"
    if isinstance(store, S3Store):
        assert local.is_relative_to(home / "cache")
        assert not (home / "artifacts").exists()
        assert not [p for p in (home / "cache").iterdir() if p.name.startswith(".partial")]
    else:
        assert local == home / "artifacts" / "models" / "2" / "start.weights"


def test_a_download_is_the_file_or_a_presigned_url_with_its_bytes(
    store: ArtifactStore, tmp_path: Path
) -> None:
    store.put_file("jobs/5/best.pt", _file(tmp_path, "b", b"the best checkpoint"))
    target = store.download("jobs/5/best.pt", "job5-best.pt")
    if isinstance(store, LocalStore):
        assert target == store.root / "jobs" / "5" / "best.pt"
    else:
        assert isinstance(target, str) and "X-Amz-Signature=" in target
        reply = httpx.get(target)  # no credentials: the URL is the permission
        assert reply.status_code == 200
        assert reply.content == b"the best checkpoint"
        assert 'filename="job5-best.pt"' in reply.headers["content-disposition"]
    with pytest.raises(FileNotFoundError):
        store.download("jobs/5/last.pt", "job5-last.pt")


def test_objects_live_under_the_urls_prefix(s3_server: S3Server, tmp_path: Path) -> None:
    store = open_store(Settings(home=tmp_path, artifacts_url=f"s3://{BUCKET}/a/b/"))
    store.put_file("jobs/1/last.pt", _file(tmp_path, "x", b"x"))
    assert s3_server.keys("a/") == ["a/b/jobs/1/last.pt"]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://minio:9000/bucket", "is not an S3 URL: write s3://BUCKET"),
        ("s3:///prefix", "is not an S3 URL"),
        ("s3://My_Bucket/x", "'My_Bucket' is not an S3 bucket name"),
        ("s3://ab", "'ab' is not an S3 bucket name"),
    ],
)
def test_a_malformed_artifacts_url_is_refused_at_start(
    url: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AETRAIN_ARTIFACTS_URL", url)
    with pytest.raises(ValidationError, match=re.escape(says)):
        Settings()


def test_docker_compose_points_the_api_and_workers_at_its_minio_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    minio = services["minio"]["environment"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        bucket, _ = parse_s3_url(Settings().artifacts_url or "")
        assert f"store/{bucket}" in services["minio-bucket"]["entrypoint"][-1]
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            minio["MINIO_ROOT_USER"],
            minio["MINIO_ROOT_PASSWORD"],
        )
        assert services[name]["depends_on"]["minio-bucket"] == {
            "condition": "service_completed_successfully"
        }


def test_start_weights_uploaded_through_the_api_live_in_the_bucket(
    s3_server: S3Server, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade(url)
    settings = Settings(
        home=tmp_path / "home", database_url=url, artifacts_url=f"s3://{BUCKET}/api"
    )
    auth = _key(settings, "alice")
    data = _weights(CUTOFF)
    with TestClient(create_app(settings)) as client:
        model_id = _upload_cfg(client, auth)
        assert _upload(client, auth, model_id, data, cutoff=CUTOFF).status_code == 201
        key = f"api/models/{model_id}/start.weights"
        assert client.get(f"/v1/models/{model_id}", headers=auth).json()["weights"]["size"] == len(
            data
        )
        stored = s3_server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert stored == data
        assert not list((settings.artifacts_dir / "models").rglob("*.weights"))
        assert client.delete(f"/v1/models/{model_id}", headers=auth).status_code == 204
        assert s3_server.keys("api/") == []
