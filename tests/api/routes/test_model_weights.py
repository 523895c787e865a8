"""Start weights over HTTP: uploading darknet .weights for a cfg (checked against its layers,
in the quota, deleted with it), jobs starting from them or from a finished job's checkpoint,
and the job's log saying which layers were loaded."""

import io
import time
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from ae_model.cfg import bundled_cfg_path, list_bundled_cfgs, parse_cfg
from ae_model.darknet import Darknet
from ae_model.layers import ConvolutionalLayer
from ae_model.weights import WeightsHeader, darknet_tensors, save_darknet_weights
from api.core.job_spec import ComparisonCreate
from api.core.settings import Settings
from api.services.model_weights import layer_values
from tests.api.conftest import ready_dataset, running_job
from tests.api.routes.conftest import TINY_TRAIN

CFG = "yolov3-tiny-small"  # 10 classes
CUTOFF = 9  # its first 9 layers hold 5 [convolutional]
BACKBONE = [0, 2, 4, 6, 8]


def _cfg_text() -> str:
    return bundled_cfg_path(CFG).read_text()


def _weights(
    cutoff: int | None = None, cfg: str = CFG, header: WeightsHeader | None = None
) -> bytes:
    torch.manual_seed(1234)
    buffer = io.BytesIO()
    save_darknet_weights(Darknet(cfg), buffer, cutoff=cutoff, header=header)
    return buffer.getvalue()


def _upload_cfg(client: TestClient, auth: dict[str, str]) -> int:
    response = client.post("/v1/models", json={"name": "tiny", "cfg": _cfg_text()}, headers=auth)
    assert response.status_code == 201, response.text
    model_id: int = response.json()["id"]
    return model_id


def _upload(
    client: TestClient, auth: dict[str, str], ref: int | str, data: bytes, **form: Any
) -> Any:
    files = {"file": ("backbone.weights", data, "application/octet-stream")}
    return client.post(f"/v1/models/{ref}/weights", files=files, data=form, headers=auth)


@pytest.mark.parametrize("name", list_bundled_cfgs())
def test_the_api_counts_each_layer_as_ae_model_writes_it(name: str) -> None:
    model = Darknet(name)
    written = [
        (i, sum(t.numel() for t in darknet_tensors(layer)))
        for i, layer in enumerate(model.layers)
        if isinstance(layer, ConvolutionalLayer)
    ]
    assert layer_values(model.config) == written


def test_weights_are_checked_stored_counted_and_deleted_with_the_model(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], settings: Settings
) -> None:
    model_id = _upload_cfg(client, auth)
    data = _weights(CUTOFF)
    assert _upload(client, other_auth, model_id, data, cutoff=CUTOFF).status_code == 404
    response = _upload(client, auth, model_id, data, cutoff=CUTOFF)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["size"], body["cutoff"], body["layers"]) == (len(data), CUTOFF, 5)
    assert body["version"] == "0.2.5"
    assert client.get(f"/v1/models/{model_id}", headers=auth).json()["weights"] == body
    assert client.get("/v1/usage", headers=auth).json()["model_bytes"] == len(data)
    folder = settings.artifacts_dir / "models" / str(model_id)
    assert folder.is_dir()
    assert client.delete(f"/v1/models/{model_id}", headers=auth).status_code == 204
    assert not folder.exists()
    assert client.get("/v1/usage", headers=auth).json()["model_bytes"] == 0


def test_a_file_that_does_not_fit_the_cfg_is_refused_saying_why(
    client: TestClient, auth: dict[str, str]
) -> None:
    model_id = _upload_cfg(client, auth)
    backbone = _weights(CUTOFF)

    def refusal(data: bytes, **form: Any) -> str:
        response = _upload(client, auth, model_id, data, **form)
        assert response.status_code == 422, response.text
        return str(response.json()["detail"])

    assert "upload it with cutoff=9" in refusal(backbone)
    assert "layers 0-10 of model" in refusal(backbone, cutoff=11)
    assert "for another network" in refusal(_weights(cfg="yolov3-tiny"))
    assert "not whole float32 values" in refusal(backbone + b"\0")
    assert "does not start with a darknet .weights header" in refusal(b"\1\0\0")
    assert f"model {model_id} has 24 layers" in refusal(_weights(), cutoff=99)
    assert client.get(f"/v1/models/{model_id}", headers=auth).json()["weights"] is None


def test_an_old_header_with_a_32_bit_seen_is_read(client: TestClient, auth: dict[str, str]) -> None:
    model_id = _upload_cfg(client, auth)
    data = _weights(header=WeightsHeader(0, 1, 0, seen=64000))
    assert WeightsHeader.from_bytes(data).nbytes == 16
    response = _upload(client, auth, model_id, data)
    assert response.status_code == 201, response.text
    assert (response.json()["version"], response.json()["seen"]) == ("0.1.0", 64000)


def test_bundled_cfgs_take_no_weights_and_quota_applies(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    assert _upload(client, auth, CFG, _weights()).status_code == 409
    model_id = _upload_cfg(client, auth)
    settings.max_tenant_bytes = 1000  # the app's own settings object, read per request
    response = _upload(client, auth, model_id, _weights())
    assert response.status_code == 413
    assert "models' weights" in response.json()["detail"]
    assert not list((settings.artifacts_dir / "models" / str(model_id)).iterdir())


def _job(model: int | str, dataset_id: int, init: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "dataset_id": dataset_id, "train": {"max_batches": 2}, "init": init}


def _refusal(client: TestClient, auth: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=spec, headers=auth)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    return dict(error)


def test_a_start_that_does_not_exist_is_refused(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], settings: Settings
) -> None:
    dataset_id = ready_dataset(settings, "alice", num_train=8)
    model_id = _upload_cfg(client, auth)
    weights = {"source": "model_weights"}
    error = _refusal(client, auth, _job(CFG, dataset_id, weights))
    assert error["loc"] == ["body", "init", "source"] and "has no weights" in error["msg"]
    assert "has no weights" in _refusal(client, auth, _job(model_id, dataset_id, weights))["msg"]
    running = running_job(settings, [], checkpoint_at=1)
    start = {"source": "job", "job_id": running}
    assert "is running" in _refusal(client, auth, _job(model_id, dataset_id, start))["msg"]
    other = ready_dataset(settings, "mallory", num_train=8)
    error = _refusal(client, other_auth, _job(CFG, other, start))
    assert error["loc"] == ["body", "init", "job_id"] and f"no job {running}" in error["msg"]


def test_every_arm_of_a_comparison_starts_from_the_base_start() -> None:
    base = _job(3, 1, {"source": "job", "job_id": 7, "checkpoint": "best"})
    spec = ComparisonCreate.model_validate(
        {"base": base, "arms": [{"name": "a"}, {"name": "b", "ae": {"layers": 8}}], "seeds": [0, 1]}
    )
    assert {str(run["init"]) for _, _, run in spec.job_specs()} == {str(base["init"])}


def _finished(client: TestClient, auth: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=spec, headers=auth)
    assert response.status_code == 201, response.text
    url = f"/v1/jobs/{response.json()['id']}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(url, headers=auth).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            assert job["state"] == "succeeded", job
            return job
        time.sleep(0.25)
    raise AssertionError(f"{url} did not finish: {job}")


def _notes(client: TestClient, auth: dict[str, str], job_id: int) -> list[str]:
    log = client.get(f"/v1/jobs/{job_id}/log", headers=auth).json()["data"]
    return [event["message"] for event in log if "started from" in event["message"]]


def test_jobs_start_from_model_weights_and_fine_tune_across_classes(
    service: dict[str, Any],
) -> None:
    client, auth = service["client"], service["auth"]
    model_id = _upload_cfg(client, auth)
    assert _upload(client, auth, model_id, _weights(CUTOFF), cutoff=CUTOFF).status_code == 201
    train = {**TINY_TRAIN, "max_batches": 4, "eval_interval": 0, "checkpoint_interval": 0}
    common = {"model": model_id, "queue": service["queue"], "train": train}
    # The shapes dataset has 6 classes: the cfg's 10-class heads are retargeted to it.
    first = _finished(client, auth, {**common, "dataset_id": service["dataset_id"],
                                     "init": {"source": "model_weights"}})  # fmt: skip
    assert first["resolved"]["start"]["loaded"] == BACKBONE
    (note,) = _notes(client, auth, first["id"])
    assert f"note: started from start.weights (first {CUTOFF} layers)" in note
    digits = client.post(
        "/v1/datasets/generate",
        json={"kind": "digits", "train": 8, "val": 4, "size": 96, "seed": 1, "min_scale": 0.1},
        headers=auth,
    )
    assert digits.status_code == 201, digits.text
    start = {"source": "job", "job_id": first["id"], "checkpoint": "last"}
    tuned = _finished(client, auth, {**common, "dataset_id": digits.json()["id"], "init": start})
    heads = [i - 1 for i, s in enumerate(parse_cfg(_cfg_text()).sections) if s.type == "yolo"]
    assert tuned["resolved"]["start"]["reshaped"] == heads
    assert tuned["resolved"]["start"]["file"] == "last.pt"
    (note,) = _notes(client, auth, tuned["id"])
    assert f"re-initialised {heads[0]}, {heads[1]} (other shapes" in note
