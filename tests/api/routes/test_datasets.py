"""Datasets over HTTP on PostgreSQL and SQLite: real zips, real generated data, no leftovers."""

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ae_model.data.check import check_dataset
from api.core.settings import Settings
from tests.ae_model.data.dataset_files import (
    Files,
    coco_files,
    symlink_member,
    yolo_files,
    zip_bytes,
    zip_with_member,
)
from tests.conftest import REPO_ROOT

GENERATE = {"kind": "shapes", "train": 3, "val": 2, "size": 64, "seed": 5, "min_scale": 0.15}


def upload(client: TestClient, auth: dict[str, str], data: bytes, name: str | None = None) -> Any:
    form = {"name": name} if name else None
    files = {"file": ("data.zip", data, "application/zip")}
    return client.post("/v1/datasets", files=files, data=form, headers=auth)


def assert_nothing_stored(client: TestClient, auth: dict[str, str], settings: Settings) -> None:
    assert client.get("/v1/datasets", headers=auth).json() == {"data": [], "count": 0}
    datasets_dir = settings.artifacts_dir / "datasets"
    assert not datasets_dir.exists() or not any(datasets_dir.iterdir())


def test_upload_coco_zip(client: TestClient, auth: dict[str, str], settings: Settings) -> None:
    response = upload(client, auth, zip_bytes(coco_files(train=3)), name="pets")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "pets" and body["status"] == "ready"
    assert body["class_names"] == ["cat", "dog"]
    assert (body["num_train"], body["num_val"]) == (3, 1)
    assert body["report"]["errors"] == [] and body["report"]["warnings"] == []
    assert body["report"]["counts"]["train"] == {"layout": "coco", "images": 3, "objects": 3}
    stored = settings.artifacts_dir / "datasets" / str(body["id"])
    assert (stored / "annotations" / "instances_train.json").is_file()
    assert [p.name for p in stored.parent.iterdir()] == [str(body["id"])]  # no staging left
    assert client.get(f"/v1/datasets/{body['id']}", headers=auth).json() == body


def test_upload_yolo_zip_in_a_wrapper_folder_keeps_warnings(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    files = yolo_files(train=4)
    files["labels/train/orphan.txt"] = "0 0.5 0.5 0.1 0.1\n"
    response = upload(client, auth, zip_bytes(files, prefix="mydata/"))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "data"  # from the file name
    assert (body["num_train"], body["num_val"]) == (4, 1)
    assert body["report"]["counts"]["train"]["layout"] == "yolo"
    assert [w["file"] for w in body["report"]["warnings"]] == ["mydata/labels/train/orphan.txt"]
    root = settings.artifacts_dir / "datasets" / str(body["id"]) / "mydata"
    assert check_dataset(root).ok  # stored where the worker will read it
    listed = client.get("/v1/datasets", headers=auth).json()
    assert listed["count"] == 1 and listed["data"][0]["report"] == body["report"]


def _bomb() -> bytes:
    return zip_bytes({**coco_files(), "images/train/zeros.png": bytes(20 << 20)})


@pytest.mark.parametrize(
    ("make_zip", "expected"),
    [
        (lambda: zip_with_member(zipfile.ZipInfo("../evil.txt"), b"x"), "contains '..'"),
        (lambda: zip_with_member(zipfile.ZipInfo("/tmp/evil.txt"), b"x"), "absolute path"),
        (lambda: zip_with_member(symlink_member(), b"/etc/passwd"), "symbolic link"),
        (_bomb, "possible zip bomb"),
        (lambda: b"PNG? no, just bytes" * 50, "not a readable zip archive"),
        (lambda: b"", "not a readable zip archive"),
    ],
    ids=["traversal", "absolute", "symlink", "zip-bomb", "not-a-zip", "empty"],
)
def test_unsafe_or_unreadable_uploads_are_refused(
    client: TestClient,
    auth: dict[str, str],
    settings: Settings,
    make_zip: Any,
    expected: str,
) -> None:
    response = upload(client, auth, make_zip())
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]
    assert_nothing_stored(client, auth, settings)
    assert not Path("/tmp/evil.txt").exists()


def test_too_many_members_and_too_many_bytes(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    # The app's own settings object, read per request.
    settings.max_dataset_files = 3
    response = upload(client, auth, zip_bytes(coco_files()))
    assert response.status_code == 422
    assert "holds 5 entries, more than the limit of 3" in response.json()["detail"]
    settings.max_dataset_files = Settings.model_fields["max_dataset_files"].default
    settings.max_dataset_bytes = 1000
    response = upload(client, auth, zip_bytes(coco_files()))
    assert response.status_code == 422
    assert "more than the limit of 1000" in response.json()["detail"]
    assert_nothing_stored(client, auth, settings)


def test_oversize_upload_is_413(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    settings.max_upload_bytes = 1000
    data = zip_bytes(coco_files())
    assert len(data) > 1000
    response = upload(client, auth, data)
    assert response.status_code == 413
    assert "upload limit of 1000 bytes" in response.json()["detail"]

    # Without a Content-Length the body is counted as it streams in.
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    chunks = [head, *[bytes(500)] * 10, f"\r\n--{boundary}--\r\n".encode()]
    response = client.post(
        "/v1/datasets",
        content=iter(chunks),
        headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413, response.text
    assert_nothing_stored(client, auth, settings)


def _coco_edit(edit: Any) -> Files:
    files = coco_files()
    edit(files)
    return files


def _set(files: Files, path: str, value: Any) -> None:
    files[path] = value


def _replace_label(text: str) -> Files:
    files = yolo_files()
    files["labels/train/001.txt"] = text
    return files


@pytest.mark.parametrize(
    ("files", "file", "expected"),
    [
        (
            _coco_edit(lambda f: _set(f, "images/train/001.png", b"GIF? no: plain text")),
            "images/train/001.png",
            "not a readable image",
        ),
        (
            _coco_edit(
                lambda f: f["annotations/instances_train.json"]["annotations"][0].update(
                    bbox=[40, 30, 30, 30]
                )
            ),
            "annotations/instances_train.json",
            "crosses the right edge",
        ),
        (_replace_label("0 0.5 0.9 0.2 0.4\n"), "labels/train/001.txt", "bottom edge"),
        (_replace_label("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n"), "labels/train/001.txt",
         "class id 2 is out of range"),
        (
            _coco_edit(
                lambda f: f["annotations/instances_val.json"]["annotations"][0].update(
                    image_id=42
                )
            ),
            "annotations/instances_val.json",
            "image_id 42 is not a usable image",
        ),
        (
            _coco_edit(
                lambda f: f["annotations/instances_train.json"]["annotations"][0].update(
                    category_id=7
                )
            ),
            "annotations/instances_train.json",
            "category_id 7 is not declared",
        ),
        (_coco_edit(lambda f: f.pop("images/train/001.png")), "annotations/instances_train.json",
         "images/train/001.png does not exist"),
        ({k: v for k, v in yolo_files().items() if "/val/" not in k}, ".", "no 'val' split"),
    ],
    ids=[
        "not-an-image",
        "coco-box-outside",
        "yolo-box-outside",
        "class-out-of-range",
        "annotation-for-missing-image",
        "undeclared-category",
        "image-file-missing",
        "missing-split",
    ],
)  # fmt: skip
def test_invalid_datasets_are_refused_with_a_report(
    client: TestClient,
    auth: dict[str, str],
    settings: Settings,
    files: Files,
    file: str,
    expected: str,
) -> None:
    response = upload(client, auth, zip_bytes(files))
    assert response.status_code == 422, response.text
    body = response.json()
    problems = body["report"]["errors"]
    assert body["detail"].startswith(f"the dataset has {len(problems)} error(s), first: ")
    assert str(problems[0]["message"]) in body["detail"] and "upload again" in body["detail"]
    assert any(p["file"] == file and expected in p["message"] for p in problems), problems
    if file.endswith(".txt"):
        assert problems[0]["line"] >= 1
    assert_nothing_stored(client, auth, settings)


def test_generate_then_list_and_get(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    first = client.post("/v1/datasets/generate", json=GENERATE, headers=auth)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["name"] == "shapes-3+2-64px-seed5"
    assert (body["num_train"], body["num_val"]) == (3, 2)
    assert body["class_names"][0] == "circle"
    assert body["report"]["generator"]["seed"] == 5
    assert body["report"]["counts"]["val"]["images"] == 2
    assert check_dataset(settings.artifacts_dir / "datasets" / str(body["id"])).ok

    second = client.post("/v1/datasets/generate", json={**GENERATE, "name": "b"}, headers=auth)
    assert second.status_code == 201
    page = client.get("/v1/datasets?limit=1", headers=auth).json()
    assert page["count"] == 2 and [d["name"] for d in page["data"]] == ["b"]
    page = client.get("/v1/datasets?limit=1&offset=1", headers=auth).json()
    assert [d["id"] for d in page["data"]] == [body["id"]]
    assert client.get(f"/v1/datasets/{body['id']}", headers=auth).json() == body


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"train": 4000, "val": 1001}, "at most 5000 images"),
        ({"size": 32}, "greater than or equal to 64"),
        ({"size": 1024, "train": 400}, "too many pixels"),
        ({"kind": "faces"}, "digits"),
        ({"min_objects": 5, "max_objects": 2}, "min_objects"),
        ({"min_scale": 0.05}, "under 6 px"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_generate_bounds(
    client: TestClient, auth: dict[str, str], change: dict[str, Any], expected: str
) -> None:
    response = client.post("/v1/datasets/generate", json={**GENERATE, **change}, headers=auth)
    assert response.status_code == 422
    assert expected in response.text


def test_upload_name_is_one_printable_line(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    assert upload(client, auth, zip_bytes(coco_files()), name="a\x00b").status_code == 422
    assert_nothing_stored(client, auth, settings)


def test_tenants_see_only_their_datasets(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    created = upload(client, auth, zip_bytes(coco_files())).json()
    assert client.get(f"/v1/datasets/{created['id']}", headers=other_auth).status_code == 404
    assert client.get("/v1/datasets", headers=other_auth).json() == {"data": [], "count": 0}
    missing = client.get("/v1/datasets/999999", headers=auth)
    assert missing.status_code == 404 and "999999" in missing.json()["detail"]
    for dataset_id in ("0", "-1", str(2**63)):  # beyond any row id: not found, not a crash
        assert client.get(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 404


@pytest.mark.parametrize(
    ("method", "url"),
    [("get", "/v1/datasets"), ("get", "/v1/datasets/1"), ("post", "/v1/datasets/generate")],
)
def test_datasets_need_an_api_key(client: TestClient, method: str, url: str) -> None:
    response = client.request(method, url, json=GENERATE)
    assert response.status_code == 401 and "API key" in response.json()["detail"]
    bad = client.request(method, url, json=GENERATE, headers={"Authorization": "Bearer aet_x"})
    assert bad.status_code == 401


def test_upload_needs_an_api_key(client: TestClient, settings: Settings) -> None:
    response = upload(client, {}, zip_bytes(coco_files()))
    assert response.status_code == 401
    assert not (settings.artifacts_dir / "datasets").exists()


def test_openapi_documents_the_upload(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    upload_op = spec["paths"]["/v1/datasets"]["post"]
    assert set(upload_op["responses"]) >= {"201", "413", "422"}
    assert "multipart/form-data" in upload_op["requestBody"]["content"]
    assert spec["components"]["schemas"]["DatasetGenerate"]["examples"]


NO_TORCH_SCRIPT = """
import sys
from pathlib import Path
from fastapi.testclient import TestClient
from api.auth import create_tenant_with_key
from api.core.db import make_engine, make_session_factory
from api.main import create_app
from api.migrate import upgrade
from api.core.settings import Settings
from tests.ae_model.data.dataset_files import coco_files, zip_bytes

home = Path(sys.argv[1])
url = f"sqlite:///{home / 'a.db'}"
upgrade(url)
with make_session_factory(make_engine(url))() as session:
    auth = {"Authorization": f"Bearer {create_tenant_with_key(session, 't').key}"}
with TestClient(create_app(Settings(home=home, database_url=url))) as client:
    digits = {"kind": "digits", "train": 2, "val": 1, "size": 128}
    assert client.post("/v1/datasets/generate", json=digits, headers=auth).status_code == 201
    zipped = {"file": ("d.zip", zip_bytes(coco_files()))}
    assert client.post("/v1/datasets", files=zipped, headers=auth).status_code == 201
    assert client.get("/v1/models/yolov3/layers?size=608", headers=auth).status_code == 200
loaded = sorted(m for m in ("torch", "torchvision") if m in sys.modules)
assert not loaded, f"imported {loaded}"
"""


def test_dataset_and_model_requests_do_not_import_torch(tmp_path: Path) -> None:
    # A fresh interpreter: this test process may already hold torch from other tests.
    subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, str(tmp_path)], cwd=REPO_ROOT, check=True
    )
