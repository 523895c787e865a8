"""`aetrain jobs|datasets|models` against a real `aetrain serve` (embedded: SQLite, file broker,
worker process): a tiny job from submit through watch to its ONNX file run in ONNX Runtime,
cancel, the server's errors printed as its message, datasets and models."""

import io
import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # type: ignore[import-untyped]
import pytest
import torch
from typer.testing import CliRunner, Result

from ae_model.cfg import bundled_cfg_path, parse_cfg
from ae_model.darknet import Darknet
from ae_model.data.synthetic import generate_dataset
from api.cli import app
from api.client import free_port, wait_until_serving
from tests.ae_model.test_export import ATOL, RTOL
from tests.api.routes.conftest import TINY_TRAIN
from tests.api.test_cli import AETRAIN, _env

SHAPES = ["--train", "16", "--val", "4", "--size", "96", "--seed", "1", "--min-scale", "0.1"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``aetrain serve`` on a free port with its embedded worker; its URL, key and home."""
    tmp = tmp_path_factory.mktemp("serve")
    home, port, log_path = tmp / "home", free_port(), tmp / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [AETRAIN, "serve", "--port", str(port)], env={**_env(home), "OMP_NUM_THREADS": "1"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, proc, log_path, 90)
        key = (home / "api_key").read_text().strip()
        yield {"url": url, "key": key, "home": home, "log": log_path}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)


def aetrain(server: dict[str, Any], *args: str, key: bool = True) -> Result:
    """Run ``aetrain ARGS`` on the server (its key given by AETRAIN_API_KEY, or without
    ``key`` found where `aetrain serve` wrote it, in AETRAIN_HOME)."""
    env = {"AETRAIN_SERVER": server["url"], "AETRAIN_HOME": str(server["home"]),
           "AETRAIN_API_KEY": server["key"] if key else None, "COLUMNS": "200"}  # fmt: skip
    result = CliRunner().invoke(app, list(args), env=env)
    # The commands' own errors end in a message and an exit code, never in a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def ok(server: dict[str, Any], *args: str) -> Any:
    """``aetrain ARGS --json``'s output, checked to have succeeded."""
    result = aetrain(server, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_job_from_submit_through_watch_to_its_onnx_file(
    server: dict[str, Any], tmp_path: Path
) -> None:
    dataset = ok(server, "datasets", "generate", "shapes", *SHAPES, "--name", "tiny")
    assert (dataset["num_train"], dataset["num_val"], dataset["name"]) == (16, 4, "tiny")
    spec = tmp_path / "job.json"
    body = {"model": "yolov3-tiny-small", "dataset_id": dataset["id"], "train": TINY_TRAIN,
            "ae": {"layers": {"stride": 16}}}  # fmt: skip
    spec.write_text(json.dumps(body))
    job_id = ok(server, "jobs", "submit", str(spec))["id"]

    # No ONNX file while it trains: a 409 that says when there will be one.
    early = aetrain(server, "jobs", "download", str(job_id), "--format", "onnx", "-o",
                    str(tmp_path / "early.onnx"))  # fmt: skip
    assert early.exit_code == 1 and "(HTTP 409)" in early.stderr, early.output
    assert "written for last and best when a job's training ends" in early.stderr
    assert not list(tmp_path.glob("early.onnx*"))

    watched = aetrain(server, "jobs", "watch", str(job_id))
    assert watched.exit_code == 0, (watched.output, server["log"].read_text()[-3000:])
    assert f"job {job_id}: succeeded" in watched.stdout
    assert f"job {job_id}" in watched.stderr and "30/30" in watched.stderr  # the progress bar

    listed = aetrain(server, "jobs", "list").stdout.splitlines()
    assert listed[0].split() == ["ID", "STATE", "MODEL", "DATASET", "ITERATION", "AP", "CREATED"]
    assert listed[1].split()[:5] == [str(job_id), "succeeded", "yolov3-tiny-small",
                                     str(dataset["id"]), "30/30"]  # fmt: skip
    shown = aetrain(server, "jobs", "show", str(job_id)).stdout
    assert "iteration 30 of 30" in shown and "checkpoint last (iteration 30): onnx" in shown

    files = {}
    for fmt in ("onnx", "pt", "weights"):
        files[fmt] = tmp_path / f"last.{fmt}"
        done = aetrain(server, "jobs", "download", str(job_id), "--format", fmt, "-o",
                       str(files[fmt]))  # fmt: skip
        assert done.exit_code == 0 and done.stdout.strip() == str(files[fmt]), done.output
    job = ok(server, "jobs", "show", str(job_id))
    assert_onnx_matches_checkpoint(files["onnx"], files["pt"], job["resolved"]["cfg_text"])

    # `aetrain export` makes from the .pt what the worker made.
    again = tmp_path / "again.weights"
    exported = aetrain(server, "export", str(files["pt"]), "--format", "weights", "-o", str(again))
    assert exported.exit_code == 0, exported.output
    assert again.read_bytes() == files["weights"].read_bytes()
    exported = aetrain(server, "export", str(files["pt"]), "-o", str(tmp_path / "again.onnx"))
    assert "input images (batch, 3, 96, 96)" in exported.stdout, exported.output
    assert_onnx_matches_checkpoint(
        tmp_path / "again.onnx", files["pt"], job["resolved"]["cfg_text"]
    )


def assert_onnx_matches_checkpoint(onnx_file: Path, checkpoint: Path, cfg_text: str) -> None:
    """ONNX Runtime on ``onnx_file`` gives the boxes of the checkpoint's network in eval mode
    (built here from the job's resolved cfg), at batch 1 and 3."""
    state = torch.load(io.BytesIO(checkpoint.read_bytes()), map_location="cpu", weights_only=False)
    network = Darknet(parse_cfg(cfg_text)).eval()
    network.load_state_dict(state["model"])
    session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        images = torch.rand(batch, 3, 96, 96)
        with torch.no_grad():
            expected = network(images).numpy()
        (boxes,) = session.run(None, {"images": images.numpy()})
        np.testing.assert_allclose(boxes, expected, rtol=RTOL, atol=ATOL)


def test_the_servers_errors_are_printed_as_its_messages(
    server: dict[str, Any], tmp_path: Path
) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"model": "yolov3-tiny-small", "dataset_id": 999999,
                                "queue": "nobody", "train": TINY_TRAIN}))  # fmt: skip
    refused = aetrain(server, "jobs", "submit", str(spec))
    assert refused.exit_code == 1 and "dataset 999999" in refused.stderr, refused.output
    assert "(HTTP 4" in refused.stderr and not refused.stdout

    missing = aetrain(server, "jobs", "show", "999999")
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "error: job 999999 not found (HTTP 404)"
    bad_format = aetrain(server, "jobs", "download", "1", "--format", "tflite")
    assert bad_format.exit_code == 1 and "query.format: " in bad_format.stderr

    unreachable = CliRunner().invoke(
        app, ["jobs", "list", "--server", f"http://127.0.0.1:{free_port()}", "--key", "k"]
    )
    assert unreachable.exit_code == 2 and "cannot reach the aetrain server" in unreachable.stderr
    wrong_key = CliRunner().invoke(app, ["jobs", "list", "--server", server["url"], "--key", "no"])
    assert wrong_key.exit_code == 1 and "(HTTP 401)" in wrong_key.stderr


def test_upload_a_dataset_then_cancel_a_queued_job(server: dict[str, Any], tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    generate_dataset("shapes", data, train=4, val=2, size=64, seed=2, min_scale=0.2)
    archive = Path(shutil.make_archive(str(tmp_path / "shapes"), "zip", data))
    uploaded = ok(server, "datasets", "upload", str(archive), "--name", "uploaded")
    assert (uploaded["status"], uploaded["num_train"]) == ("ready", 4)
    spec = tmp_path / "job.json"
    # On a queue no worker consumes the job stays queued, so cancelling it is immediate.
    spec.write_text(json.dumps({"model": "yolov3-tiny-small", "dataset_id": uploaded["id"],
                                "queue": "nobody", "train": TINY_TRAIN}))  # fmt: skip
    submitted = aetrain(server, "jobs", "submit", str(spec), key=False)  # the key file's key
    assert submitted.exit_code == 0, submitted.output
    job_id = int(submitted.stdout.split()[1])
    assert submitted.stdout.strip() == f"job {job_id} queued on queue nobody"
    assert aetrain(server, "jobs", "cancel", str(job_id)).stdout.strip() == (
        f"job {job_id}: cancelled"
    )
    again = aetrain(server, "jobs", "cancel", str(job_id))
    assert again.exit_code == 1 and "(HTTP 409)" in again.stderr
    assert ok(server, "jobs", "list", "--state", "cancelled")["data"][0]["id"] == job_id

    names = aetrain(server, "datasets", "list").stdout
    assert "uploaded" in names and "ready" in names
    assert (
        "4 train and 2 val images, 6 classes"
        in aetrain(server, "datasets", "show", str(uploaded["id"])).stdout
    )


def test_models_list_show_upload_and_layers(server: dict[str, Any], tmp_path: Path) -> None:
    listed = aetrain(server, "models", "list").stdout.splitlines()
    assert listed[0].split() == ["REF", "NAME", "SOURCE", "CLASSES", "SIZE", "LAYERS", "BFLOPS"]
    assert any(line.split()[:3] == ["yolov3-tiny-small"] * 2 + ["bundled"] for line in listed)
    cfg = tmp_path / "mine.cfg"
    cfg.write_text(bundled_cfg_path("yolov2-tiny-small").read_text())
    uploaded = ok(server, "models", "upload", str(cfg))
    assert (uploaded["name"], uploaded["source"]) == ("mine", "uploaded")
    shown = aetrain(server, "models", "show", uploaded["ref"]).stdout
    assert shown.startswith(f"model {uploaded['ref']} (mine, uploaded)")
    table = aetrain(server, "models", "layers", uploaded["ref"], "--size", "160x96").stdout
    rows = table.splitlines()
    assert rows[0].split()[:2] == ["LAYER", "TYPE"] and rows[1].split()[4] == "160x96x3"
    assert rows[-1].startswith("mine at 160x96: ")
    bad = aetrain(server, "models", "layers", uploaded["ref"], "--size", "100")
    assert bad.exit_code == 1 and "(HTTP 422)" in bad.stderr
