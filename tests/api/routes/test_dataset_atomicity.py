"""Hostile datasets on PostgreSQL and SQLite: an upload that fails in any way, anticipated or
not, stores nothing (no row, no folder) and leaves the tenant's listing working; a dataset's
class count reaches the budgets of the jobs that train on it."""

import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from ae_model.data.archive import MAX_NAME_BYTES, MAX_PATH_DEPTH
from ae_model.data.check import DatasetReport
from api.core.db.models import Dataset
from api.core.settings import Settings
from api.main import create_app
from api.services import datasets
from tests.ae_model.data.dataset_files import Files, coco_files, yolo_files, zip_bytes
from tests.api.conftest import ready_dataset
from tests.api.routes.test_datasets import assert_nothing_stored, upload


def _with_categories(*names: str) -> Files:
    files = coco_files()
    for split in ("train", "val"):
        files[f"annotations/instances_{split}.json"]["categories"] = [
            {"id": i + 1, "name": name} for i, name in enumerate(names)
        ]
    return files


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # json.dumps writes the escapes "\ud800" and "\u0000"; json.loads gives them back.
        (_with_categories("cat\ud800", "dog"), "contains the character '\\ud800'"),
        (_with_categories("cat", "d\x00g"), "contains the character '\\x00'"),
        (_with_categories("cat", "dog" * 100), "is 300 characters long, over the limit of 200"),
    ],
    ids=["lone-surrogate", "nul", "too-long"],
)
def test_class_names_that_cannot_be_stored_are_refused_with_a_report(
    client: TestClient, auth: dict[str, str], settings: Settings, files: Files, expected: str
) -> None:
    response = upload(client, auth, zip_bytes(files))
    assert response.status_code == 422, response.text
    problems = response.json()["report"]["errors"]
    assert problems[0]["file"] == "annotations/instances_train.json"
    assert expected in problems[0]["message"], problems
    assert_nothing_stored(client, auth, settings)


def test_a_dataset_with_more_classes_than_the_server_allows_is_refused(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    assert Settings.model_fields["max_classes"].default == 10_000
    settings.max_classes = 1
    response = upload(client, auth, zip_bytes(yolo_files()))
    assert response.status_code == 422, response.text
    (problem,) = response.json()["report"]["errors"]
    assert problem["file"] == "classes.txt"
    assert problem["message"] == (
        "declares 2 classes, more than this server's limit of 1; merge or drop classes"
    )
    assert_nothing_stored(client, auth, settings)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("images/train/" + "a" * (MAX_NAME_BYTES + 1), "over the 255 a file system allows"),
        ("/".join(["d" * 250] * 5), "is 1254 bytes long, over the limit of 1024"),
        ("/".join(["d"] * (MAX_PATH_DEPTH + 1)), "is 33 folders deep, over the limit of 32"),
    ],
    ids=["long-name", "long-path", "deep"],
)
def test_member_names_no_file_system_holds_are_refused(
    client: TestClient, auth: dict[str, str], settings: Settings, name: str, expected: str
) -> None:
    response = upload(client, auth, zip_bytes({**coco_files(), name: b"x"}))
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]
    assert_nothing_stored(client, auth, settings)


def test_a_zip_whose_headers_understate_its_expansion_is_refused(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    # 64 MiB of zeros (over 1000x) whose headers claim 50x, followed by the bytes they claim.
    files = {
        **coco_files(),
        "zeros.bin": bytes(64 << 20),
        "noise.bin": random.Random(0).randbytes(2 << 20),
    }
    data = bytearray(zip_bytes(files))
    for signature, size_at in ((b"PK\x01\x02", 20), (b"PK\x03\x04", 18)):
        position = data.find(signature)
        while position >= 0:
            compressed, size = struct.unpack_from("<II", data, position + size_at)
            struct.pack_into("<I", data, position + size_at, max(compressed, size // 50))
            position = data.find(signature, position + 4)
    response = upload(client, auth, bytes(data))
    assert response.status_code == 422, response.text
    assert "'zeros.bin' expands" in response.json()["detail"]
    assert "members compressed more than 100x" in response.json()["detail"]
    assert_nothing_stored(client, auth, settings)


# -- failures nobody anticipated: nothing is committed --------------------------------------


@pytest.fixture
def lenient_client(settings: Settings) -> Iterator[TestClient]:
    """The app as a client sees it: an unhandled error is a 500 response, not raised here."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def _unstorable_class_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A check that lets through a class name no JSON response can hold."""
    real_check = datasets.check_dataset

    def check(*args: Any, **kwargs: Any) -> DatasetReport:
        report = real_check(*args, **kwargs)
        report.class_names[0] = "cat\ud800"
        return report

    monkeypatch.setattr(datasets, "check_dataset", check)


def _check_crashes(monkeypatch: pytest.MonkeyPatch) -> None:
    def check(*args: Any, **kwargs: Any) -> DatasetReport:
        raise RuntimeError("a bug in the check")

    monkeypatch.setattr(datasets, "check_dataset", check)


def _publishing_rename_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def rename(self: Any, target: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets.Path, "rename", rename)


def _commit_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The database goes away at the commit of a new dataset row (flushed, folder in place)."""
    real_commit = Session.commit

    def commit(self: Session) -> None:
        if any(isinstance(row, Dataset) for row in self.identity_map.values()):
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        real_commit(self)

    monkeypatch.setattr(Session, "commit", commit)


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (_unstorable_class_name, 500),
        (_check_crashes, 500),
        (_publishing_rename_fails, 500),
        (_commit_fails, 503),
    ],
    ids=["unstorable-row", "check-crashes", "rename-fails", "commit-fails"],
)
def test_an_upload_that_fails_unexpectedly_stores_nothing(
    lenient_client: TestClient,
    auth: dict[str, str],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    fault: Callable[[pytest.MonkeyPatch], None],
    status: int,
) -> None:
    with monkeypatch.context() as patch:
        fault(patch)
        response = upload(lenient_client, auth, zip_bytes(coco_files()))
    assert response.status_code == status, response.text
    listed = lenient_client.get("/v1/datasets", headers=auth)
    assert listed.status_code == 200 and listed.json() == {"data": [], "count": 0}
    assert_nothing_stored(lenient_client, auth, settings)
    assert upload(lenient_client, auth, zip_bytes(coco_files())).status_code == 201


# -- a dataset's classes reach the budgets of its jobs -----------------------------------------


def test_a_job_on_200000_classes_is_refused(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    # yolov3 has 62 M parameters as written; with heads for 200000 classes over 1100 M.
    names = [f"class{i}" for i in range(200_000)]
    dataset = ready_dataset(settings, "alice", class_names=names, num_train=100, num_val=10)
    response = client.post(
        "/v1/jobs", json={"model": "yolov3", "dataset_id": dataset}, headers=auth
    )
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "model"], detail
    assert "resized to the dataset's 200000 classes" in detail["msg"], detail
    assert client.get("/v1/jobs", headers=auth).json()["count"] == 0


def test_a_dataset_s_classes_count_in_the_parameter_budget(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    # yolov3 with its own 80 classes has 62 M parameters, within a budget of 100 M; with
    # heads for 10000 classes it has 115 M.
    settings.max_params_m = 100
    names = [f"class{i}" for i in range(10_000)]
    dataset = ready_dataset(settings, "alice", class_names=names, num_train=100, num_val=10)
    response = client.post(
        "/v1/jobs", json={"model": "yolov3", "dataset_id": dataset}, headers=auth
    )
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "model"], detail
    assert "115.4 M parameters, over this server's budget of 100 M" in detail["msg"]
    few = ready_dataset(settings, "alice", class_names=["cat", "dog"], num_train=100, num_val=10)
    accepted = client.post("/v1/jobs", json={"model": "yolov3", "dataset_id": few}, headers=auth)
    assert accepted.status_code == 201, accepted.text
