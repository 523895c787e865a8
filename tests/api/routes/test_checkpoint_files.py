"""Checkpoint rows hold paths relative to the artifact root, so the API serves files from its
own mount of the artifact store, wherever the worker that wrote them had it."""

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from fastapi.testclient import TestClient

from ae_model.cfg import bundled_cfg_path
from ae_model.darknet import Darknet
from ae_model.train import Trainer
from api.core.db import make_engine, make_session_factory
from api.core.settings import Settings
from tests.api.conftest import running_job
from worker.hooks import CheckpointExport


def test_checkpoints_download_from_a_store_mounted_elsewhere(
    client: TestClient, auth: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    job_id = running_job(settings, [])
    worker_root = tmp_path / "worker-mount" / "artifacts"
    checkpoint = worker_root / "jobs" / str(job_id) / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"the checkpoint")
    model = Darknet(bundled_cfg_path("yolov3-tiny-small"))
    # What CheckpointExport reads: the network it exports and the images trained so far.
    trainer = SimpleNamespace(
        model=model, eval_model=model, iteration=10, evaluations=[],
        resolved=SimpleNamespace(batch=8),
    )  # fmt: skip
    engine = make_engine(settings.resolved_database_url())
    try:
        export = CheckpointExport(make_session_factory(engine), job_id, worker_root)
        export.after_checkpoint(cast(Trainer, trainer), checkpoint)
    finally:
        engine.dispose()
    weights = checkpoint.with_suffix(".weights").read_bytes()
    # The API's artifact root is another path to the same store.
    assert settings.artifacts_dir != worker_root
    settings.artifacts_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(worker_root, settings.artifacts_dir)

    url = f"/v1/jobs/{job_id}/checkpoints/last"
    pt = client.get(url, headers=auth)
    assert (pt.status_code, pt.content) == (200, b"the checkpoint"), pt.text
    assert client.get(f"{url}?format=weights", headers=auth).content == weights
    shutil.rmtree(settings.artifacts_dir / "jobs")
    assert client.get(url, headers=auth).status_code == 404
