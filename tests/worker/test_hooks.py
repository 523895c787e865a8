"""The worker's training hooks against a real database (SQLite), called as the Trainer calls
them: a lost job writes nothing more, metrics survive an outage, a rollback replaces the rows
after its checkpoint, and checkpoints are exported atomically with paths relative to the
artifact root."""

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ae_model.cfg import bundled_cfg_path
from ae_model.darknet import Darknet
from ae_model.train import Hook, NonFiniteLossError, Trainer
from ae_model.weights import WeightsHeader
from api.core import jobstore as jobs
from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import Checkpoint, Job, JobEvent, JobState, Metric
from api.migrate import upgrade
from worker import hooks as worker_hooks
from worker.hooks import CheckpointExport, JobControl, JobLostError, MetricsWriter

WORKER = "host:1"
BATCH = 6  # images per iteration of the fake trainer's run


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'hooks.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def job_id(sessions: sessionmaker[Session]) -> int:
    """A job queued, then claimed by WORKER."""
    with sessions() as session:
        tenant = Tenant(name="t")
        session.add(tenant)
        session.flush()
        job = Job(tenant_id=tenant.id, spec={})
        session.add(job)
        session.commit()
        assert jobs.claim_job(session, job.id, WORKER)
        return job.id


def _trainer(iteration: int = 0, **fields: Any) -> Trainer:
    config = SimpleNamespace(nan_lr_factor=0.1, nan_rollbacks=2)
    trainer = SimpleNamespace(iteration=iteration, epoch=None, stop_requested=False,
                              evaluations=[], rollbacks=1, config=config, **fields)  # fmt: skip
    return cast(Trainer, trainer)


def _call(hooks: list[Hook], event: str, *args: Any) -> None:
    """Call ``event`` on each hook in order, as the Trainer does (an error stops the round)."""
    for hook in hooks:
        getattr(hook, event)(*args)


def _steps(sessions: sessionmaker[Session], job_id: int) -> list[int]:
    with sessions() as session:
        query = select(Metric.step).where(Metric.job_id == job_id, Metric.key == "loss")
        return list(session.scalars(query.order_by(Metric.step)))


def _step(hooks: list[Hook], trainer: Trainer, iteration: int) -> None:
    trainer.iteration = iteration
    _call(hooks, "after_step", trainer, {"loss": 1.0 / iteration, "iteration": iteration})


def test_a_lost_job_writes_no_metric_and_no_checkpoint(
    sessions: sessionmaker[Session], job_id: int
) -> None:
    asked: list[Session] = []

    def counted() -> Session:
        asked.append(sessions())
        return asked[-1]

    control = JobControl(cast(sessionmaker[Session], counted), job_id, WORKER)
    hooks: list[Hook] = [control, MetricsWriter(sessions, job_id)]
    trainer = _trainer()
    _call(hooks, "before_train", trainer)
    for iteration in (1, 2, 3):
        _step(hooks, trainer, iteration)
    # The reaper took the job for dead and another worker claimed it.
    with sessions() as session:
        session.get_one(Job, job_id).worker = "host:2"
        session.commit()
    with pytest.raises(JobLostError):  # before the checkpoint file is written
        _call(hooks, "before_checkpoint", trainer, Path("last.pt"))
    with pytest.raises(JobLostError):  # and at the end, without asking the database again
        _call(hooks, "after_train", trainer)
    assert len(asked) == 2
    assert _steps(sessions, job_id) == []
    with sessions() as session:
        job = session.get_one(Job, job_id)
        assert (job.state, job.iteration) == (JobState.running, 0)


def test_metrics_before_a_checkpoint_are_stored_and_a_cancel_stops_the_trainer(
    sessions: sessionmaker[Session], job_id: int
) -> None:
    hooks: list[Hook] = [JobControl(sessions, job_id, WORKER), MetricsWriter(sessions, job_id)]
    trainer = _trainer()
    _call(hooks, "before_train", trainer)
    for iteration in (1, 2):
        _step(hooks, trainer, iteration)
    with sessions() as session:
        jobs.request_cancel(session, job_id)
    _call(hooks, "before_checkpoint", trainer, Path("last.pt"))
    assert _steps(sessions, job_id) == [1, 2]
    assert trainer.stop_requested
    with sessions() as session:
        assert session.get_one(Job, job_id).iteration == 2


def test_metrics_stay_buffered_while_the_database_is_down(
    sessions: sessionmaker[Session], job_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    down = True

    def flaky() -> Session:
        if down:
            raise OperationalError("connect", {}, ConnectionRefusedError("server closed"))
        return sessions()

    writer = MetricsWriter(cast(sessionmaker[Session], flaky), job_id)
    trainer = _trainer()
    _step([writer], trainer, 1)
    writer.flush()  # the database is unreachable: training goes on
    assert "database unreachable, buffering metrics" in caplog.text
    _step([writer], trainer, 2)
    down = False
    writer.flush()
    assert _steps(sessions, job_id) == [1, 2]
    assert "database back; buffered metrics written" in caplog.text


def test_a_rollback_replaces_the_stored_rows_after_its_checkpoint(
    sessions: sessionmaker[Session], job_id: int
) -> None:
    writer = MetricsWriter(sessions, job_id)
    trainer = _trainer()
    for iteration in (1, 2, 3):
        _step([writer], trainer, iteration)
    writer.flush()
    _step([writer], trainer, 4)  # buffered, not stored, when the loss turns non-finite
    trainer.iteration = 2  # back at the checkpoint of iteration 2
    writer.after_rollback(trainer, NonFiniteLossError(5, 0.3))
    assert _steps(sessions, job_id) == [1, 2]
    with sessions() as session:
        events = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id))
        assert any("rolled back to iteration 2" in message for message in events)
    _step([writer], trainer, 3)
    writer.after_train(trainer)
    assert _steps(sessions, job_id) == [1, 2, 3]


def _export(
    sessions: sessionmaker[Session], job_id: int, artifacts: Path
) -> Callable[[], tuple[Path, Path]]:
    out = artifacts / "jobs" / str(job_id)
    out.mkdir(parents=True)
    checkpoint = out / "last.pt"
    checkpoint.write_bytes(b"a checkpoint")
    model = Darknet(bundled_cfg_path("yolov3-tiny-small"))
    hook = CheckpointExport(sessions, job_id, artifacts)

    def export() -> tuple[Path, Path]:
        trainer = _trainer(
            iteration=10, model=model, eval_model=model, resolved=SimpleNamespace(batch=BATCH)
        )
        hook.after_checkpoint(trainer, checkpoint)
        return checkpoint, out / "last.weights"

    return export


def test_checkpoints_are_recorded_relative_to_the_artifact_root(
    sessions: sessionmaker[Session], job_id: int, tmp_path: Path
) -> None:
    checkpoint, weights = _export(sessions, job_id, tmp_path / "artifacts")()
    with sessions() as session:
        rows = {row.name: row for row in session.scalars(select(Checkpoint))}
    assert set(rows) == {"last.pt", "last.weights"}
    for file in (checkpoint, weights):
        row = rows[file.name]
        assert row.path == f"jobs/{job_id}/{file.name}"
        assert (row.size, row.sha256) == (
            file.stat().st_size,
            hashlib.sha256(file.read_bytes()).hexdigest(),
        )
        assert row.iteration == 10
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["last.pt", "last.weights"]
    # darknet's header counts the images trained on: 10 iterations of BATCH images.
    header = WeightsHeader.from_bytes(weights.read_bytes()[: WeightsHeader().nbytes])
    assert header.seen == 10 * BATCH


def test_checkpoint_rows_wait_for_a_database_that_went_down_after_the_flush(
    sessions: sessionmaker[Session], job_id: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # before_checkpoint found the database up and it stopped before the rows were written (a
    # restart mid-job can do that): the rows wait for it, the run does not crash.
    refusals = [OperationalError("connect", {}, ConnectionRefusedError("server closed"))]

    def restarting() -> Session:
        if refusals:
            raise refusals.pop()
        return sessions()

    export = _export(cast(sessionmaker[Session], restarting), job_id, tmp_path / "artifacts")
    export()
    assert "database unreachable, checkpoint rows wait for it" in caplog.text
    assert "database back; checkpoint rows written" in caplog.text
    with sessions() as session:
        names = set(session.scalars(select(Checkpoint.name)))
    assert names == {"last.pt", "last.weights"}


def test_weights_are_replaced_whole_or_not_at_all(
    sessions: sessionmaker[Session],
    job_id: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    export = _export(sessions, job_id, tmp_path / "artifacts")
    _, weights = export()
    before = weights.read_bytes()

    def crash_midway(model: Any, path: Path, **header: Any) -> None:
        Path(path).write_bytes(before[:100])
        raise OSError("disk full")

    monkeypatch.setattr(worker_hooks, "save_darknet_weights", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        export()
    assert weights.read_bytes() == before  # a reader never sees half a file
