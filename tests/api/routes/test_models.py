"""Models (darknet cfgs) over HTTP on PostgreSQL and SQLite: bundled, uploaded, layer tables."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from ae_model.cfg import bundled_cfg_path, list_bundled_cfgs
from api.core.db import make_engine, make_session_factory
from api.core.db.models import ModelConfig
from api.core.settings import Settings
from api.schemas.datasets import DatasetGenerate
from api.schemas.models import ModelCreate

# The [net] of yolov3-tiny-small with one unknown key (a warning, not an error).
TINY_CFG = (
    bundled_cfg_path("yolov3-tiny-small")
    .read_text()
    .replace("[net]\n", "[net]\nfavourite_colour=blue\n", 1)
)


def create(
    client: TestClient, auth: dict[str, str], cfg: str = TINY_CFG, name: str = "mine"
) -> Any:
    return client.post("/v1/models", json={"name": name, "cfg": cfg}, headers=auth)


def test_list_has_the_bundled_cfgs(client: TestClient, auth: dict[str, str]) -> None:
    page = client.get("/v1/models", headers=auth).json()
    assert page["count"] == len(list_bundled_cfgs())
    tiny = next(m for m in page["data"] if m["name"] == "yolov3-tiny")
    assert tiny["ref"] == "yolov3-tiny" and tiny["id"] is None and tiny["source"] == "bundled"
    assert (tiny["classes"], tiny["width"], tiny["height"], tiny["layers"]) == (80, 416, 416, 24)
    assert tiny["bflops"] == pytest.approx(5.571, abs=5e-4)
    assert client.get("/v1/models/yolov3-tiny", headers=auth).json() == tiny


def test_layer_table_of_yolov3_tiny(client: TestClient, auth: dict[str, str]) -> None:
    response = client.get("/v1/models/yolov3-tiny/layers?size=416", headers=auth)
    assert response.status_code == 200, response.text
    table = response.json()
    assert (table["width"], table["height"]) == (416, 416)
    assert len(table["layers"]) == 24
    assert table["total_bflops"] == pytest.approx(5.571, abs=5e-4)
    first = table["layers"][0]
    assert first == {
        "index": 0, "type": "convolutional", "filters": 16, "size": 3, "stride": 1,
        "input": [416, 416, 3], "output": [416, 416, 16], "bflops": pytest.approx(0.150, abs=5e-4),
        "out_stride": 1.0,
    }  # fmt: skip
    strides = {row["index"]: row["out_stride"] for row in table["layers"]}
    assert strides[16] == 32.0 and strides[23] == 16.0

    wide = client.get("/v1/models/yolov3-tiny/layers?size=320x192", headers=auth).json()
    assert wide["layers"][0]["output"] == [320, 192, 16]
    default = client.get("/v1/models/yolov3-tiny/layers", headers=auth).json()
    assert default["width"] == 416 and default["total_bflops"] == table["total_bflops"]


@pytest.mark.parametrize("size", ["415", "0", "-32", "abc", "416x100", "416x", "x416", "8192"])
def test_bad_sizes_are_422(client: TestClient, auth: dict[str, str], size: str) -> None:
    response = client.get(f"/v1/models/yolov3-tiny/layers?size={size}", headers=auth)
    assert response.status_code == 422
    assert "e.g. 416 or 320x192" in response.json()["detail"]


def test_upload_a_cfg_with_warnings(client: TestClient, auth: dict[str, str]) -> None:
    response = create(client, auth)
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["source"] == "uploaded" and model["ref"] == str(model["id"])
    assert (model["classes"], model["width"], model["height"]) == (10, 160, 160)
    assert model["layers"] == 24 and model["created_at"]
    assert len(model["warnings"]) == 1 and "favourite_colour" in model["warnings"][0]
    line = TINY_CFG.splitlines().index("favourite_colour=blue") + 1
    assert model["warnings"][0].startswith(f"mine.cfg:{line}: ")

    assert client.get(f"/v1/models/{model['id']}", headers=auth).json() == model
    listed = client.get("/v1/models", headers=auth).json()
    assert listed["count"] == len(list_bundled_cfgs()) + 1
    assert listed["data"][-1] == model  # bundled first, then uploads
    table = client.get(f"/v1/models/{model['id']}/layers?size=96", headers=auth).json()
    assert len(table["layers"]) == 24 and table["layers"][0]["input"] == [96, 96, 3]


def test_list_pages_across_bundled_and_uploaded(client: TestClient, auth: dict[str, str]) -> None:
    ids = [create(client, auth, name=f"m{i}").json()["id"] for i in range(3)]
    bundled = len(list_bundled_cfgs())
    page = client.get(f"/v1/models?offset={bundled - 1}&limit=3", headers=auth).json()
    assert page["count"] == bundled + 3
    assert [m["id"] for m in page["data"]] == [None, ids[2], ids[1]]  # uploads newest first
    page = client.get(f"/v1/models?offset={bundled + 2}&limit=5", headers=auth).json()
    assert [m["id"] for m in page["data"]] == [ids[0]]


def test_cfg_without_a_head_is_accepted_with_a_warning(
    client: TestClient, auth: dict[str, str]
) -> None:
    cfg = "[net]\nwidth=64\nheight=64\nchannels=3\n\n[convolutional]\nfilters=8\nsize=3\n"
    response = create(client, auth, cfg=cfg, name="backbone")
    assert response.status_code == 201, response.text
    assert response.json()["classes"] is None
    assert "no [yolo] or [region] layer" in response.json()["warnings"][0]


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (TINY_CFG.replace("[maxpool]", "[maxpooling]", 1), "unknown section [maxpooling]"),
        (TINY_CFG.replace("filters=45", "filters=44", 1), "set filters=45"),
        (TINY_CFG.replace("activation=leaky", "activation=sparkly", 1), "sparkly"),
        ("width=416\n", "a cfg starts with [net]"),
        # Darknet knows it, aetrain does not train it: refused here, not in the worker.
        (TINY_CFG.replace("policy=steps", "policy=random", 1), "policy=random"),
    ],
)
def test_bad_cfg_is_422_naming_the_line(
    client: TestClient, auth: dict[str, str], cfg: str, expected: str
) -> None:
    response = create(client, auth, cfg=cfg, name="broken")
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert expected in detail
    assert detail.startswith("broken.cfg:")
    line = int(detail.split(":")[1])
    assert line >= 1
    assert client.get("/v1/models", headers=auth).json()["count"] == len(list_bundled_cfgs())


def test_cfg_body_is_validated(client: TestClient, auth: dict[str, str]) -> None:
    assert client.post("/v1/models", json={"name": "x"}, headers=auth).status_code == 422
    for body in ({"name": "", "cfg": TINY_CFG}, {"name": "a\nb", "cfg": TINY_CFG},
                 {"name": "nul", "cfg": TINY_CFG + "\x00"}):  # fmt: skip
        assert client.post("/v1/models", json=body, headers=auth).status_code == 422


def test_unknown_models_are_404(client: TestClient, auth: dict[str, str]) -> None:
    response = client.get("/v1/models/yolov9-huge", headers=auth)
    assert response.status_code == 404 and "yolov3-tiny" in response.json()["detail"]
    for ref in ("999999", "0", str(2**63), "%C2%B2"):  # %C2%B2 is a superscript two
        assert client.get(f"/v1/models/{ref}", headers=auth).status_code == 404
    assert client.get("/v1/models/yolov9-huge/layers?size=416", headers=auth).status_code == 404


def test_tenants_see_only_their_cfgs(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    model_id = create(client, auth).json()["id"]
    assert client.get(f"/v1/models/{model_id}", headers=other_auth).status_code == 404
    layers = client.get(f"/v1/models/{model_id}/layers?size=416", headers=other_auth)
    assert layers.status_code == 404
    theirs = client.get("/v1/models", headers=other_auth).json()
    assert all(m["source"] == "bundled" for m in theirs["data"])
    assert theirs["count"] == len(list_bundled_cfgs())
    # Bundled cfgs are everyone's.
    assert client.get("/v1/models/yolov3-tiny", headers=other_auth).status_code == 200


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/v1/models"),
        ("post", "/v1/models"),
        ("get", "/v1/models/yolov3-tiny"),
        ("get", "/v1/models/yolov3-tiny/layers"),
    ],
)
def test_models_need_an_api_key(client: TestClient, method: str, url: str) -> None:
    body = {"name": "x", "cfg": TINY_CFG}
    assert client.request(method, url, json=body).status_code == 401
    wrong = {"Authorization": "Bearer aet_not-a-key"}
    assert client.request(method, url, json=body, headers=wrong).status_code == 401


def test_openapi_examples_are_valid_requests(client: TestClient, auth: dict[str, str]) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for example in schemas["ModelCreate"]["examples"]:
        ModelCreate.model_validate(example)
        assert client.post("/v1/models", json=example, headers=auth).status_code == 201
    for example in schemas["DatasetGenerate"]["examples"]:
        DatasetGenerate.model_validate(example)


def _stored_row(settings: Settings, model_id: int, **values: Any) -> dict[str, Any]:
    """Set ``values`` on the upload's row as stored, and return its summary afterwards."""
    engine = make_engine(settings.resolved_database_url())
    try:
        with make_session_factory(engine)() as session:
            row = session.get_one(ModelConfig, model_id)
            for column, value in values.items():
                setattr(row, column, value)
            session.commit()
            return row.summary or {}
    finally:
        engine.dispose()


def test_listing_reads_what_the_upload_stored_not_the_cfg(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    created = create(client, auth).json()
    # A cfg that no longer parses: listing and reading answer from the summary stored at upload.
    _stored_row(settings, created["id"], cfg_text="[net]\nwidth=-1\n")
    uploads = f"/v1/models?offset={len(list_bundled_cfgs())}"
    assert client.get(uploads, headers=auth).json()["data"] == [created]
    assert client.get(f"/v1/models/{created['id']}", headers=auth).json() == created
    layers = client.get(f"/v1/models/{created['id']}/layers", headers=auth)
    assert layers.status_code == 422 and "no longer parses" in layers.json()["detail"]


def test_a_cfg_stored_before_summaries_is_parsed_once(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    created = create(client, auth).json()
    assert _stored_row(settings, created["id"], summary=None) == {}
    uploads = f"/v1/models?offset={len(list_bundled_cfgs())}"
    assert client.get(uploads, headers=auth).json()["data"] == [created]
    summary = _stored_row(settings, created["id"])
    assert summary["layers"] == created["layers"] and summary["warnings"] == created["warnings"]
