"""A job's run in the worker: any exception, expected or not, fails the job at once with its
cause in the failure reason and the job's log, on its first attempt, and the task returns (no
retry). Against a real database (SQLite), with a Trainer that raises; and with a real worker
process, a job on a CUDA device this machine does not have."""

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import Dataset, Job, JobEvent, JobState
from api.core.settings import Settings
from api.migrate import upgrade
from tests.api.routes.conftest import TINY_TRAIN, running_service
from worker import hooks as worker_hooks
from worker import training
from worker.training import run_job

WORKER = "host:1"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'training.db'}"
    upgrade(url)
    return Settings(home=tmp_path / "home", database_url=url, heartbeat_interval_s=0.05)


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.resolved_database_url())
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def job_id(sessions: sessionmaker[Session], tmp_path: Path) -> int:
    """A queued job of a bundled cfg on a dataset row (the Trainer is replaced: no data read)."""
    with sessions() as session:
        tenant = Tenant(name="t")
        session.add(tenant)
        session.flush()
        dataset = Dataset(tenant_id=tenant.id, name="d", path=str(tmp_path), class_names=["a"])
        session.add(dataset)
        session.flush()
        spec = {"model": "yolov3-tiny-small", "dataset_id": dataset.id}
        job = Job(tenant_id=tenant.id, spec=spec)
        session.add(job)
        session.commit()
        return job.id


class _Unexpected(Exception):
    """An exception no handler of the worker names."""


class _FailsToBuild:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise _Unexpected("no such device")


class _FailsToTrain:
    iteration = 7
    start = None  # no start weights

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.config = type("Config", (), {"resolved": {"max_batches": 10}})()
        self.resolved = type("Resolved", (), {"max_batches": 10})()

    def train(self) -> dict[str, float]:
        raise _Unexpected("the loader broke")


def _outcome(sessions: sessionmaker[Session], job_id: int) -> tuple[Job, list[str]]:
    with sessions() as session:
        job = session.get_one(Job, job_id)
        events = session.scalars(
            select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
        return job, list(events)


@pytest.mark.parametrize(
    ("trainer", "reason"),
    [
        (_FailsToBuild, "could not start training: _Unexpected: no such device"),
        (_FailsToTrain, "training crashed at iteration 7: _Unexpected: the loader broke"),
    ],
)
def test_an_unexpected_exception_fails_the_job_at_once_with_its_cause(
    sessions: sessionmaker[Session],
    settings: Settings,
    job_id: int,
    monkeypatch: pytest.MonkeyPatch,
    trainer: type,
    reason: str,
) -> None:
    monkeypatch.setattr(training, "Trainer", trainer)
    run_job(job_id, sessions, settings, WORKER)  # returns: Celery acknowledges, no retry
    job, events = _outcome(sessions, job_id)
    assert (job.state, job.failure_reason, job.attempt) == (JobState.failed, reason, 1)
    assert job.finished_at is not None
    assert events[-1] == reason


def test_a_job_on_a_missing_cuda_device_fails_on_its_first_attempt(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with running_service(request, tmp_path, "sqlite+filesystem") as service:
        client, auth = service["client"], service["auth"]
        spec = {"model": "yolov3-tiny-small", "dataset_id": service["dataset_id"],
                "queue": service["queue"], "device": "cuda:7", "train": TINY_TRAIN}  # fmt: skip
        created = client.post("/v1/jobs", json=spec, headers=auth)
        assert created.status_code == 201, created.text
        url = f"/v1/jobs/{created.json()['id']}"
        deadline = time.monotonic() + 120
        while (job := client.get(url, headers=auth).json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, service["log"].read_text()[-3000:]
            time.sleep(0.2)
        assert job["state"] == "failed" and job["attempt"] == 1, job
        assert "device 'cuda:7' is not on this machine" in job["failure_reason"], job
        assert "CUDA" in job["failure_reason"], job
        # Failed is terminal: the reaper (running at test speed) never takes the job back.
        time.sleep(6)
        again = client.get(url, headers=auth).json()
        assert (again["state"], again["attempt"]) == ("failed", 1), again
        log = client.get(f"{url}/log", headers=auth).json()["data"]
        assert [e["state"] for e in log] == ["queued", "running", "failed"], log
        assert log[-1]["message"] == job["failure_reason"]


def test_a_database_refusing_every_other_session_delays_the_job_but_fails_nothing_else(
    sessions: sessionmaker[Session],
    settings: Settings,
    job_id: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A PostgreSQL restart as the worker sees it: sessions that cannot connect, between
    # sessions that can. Claiming the job, reading its inputs and recording its outcome wait
    # for the database (without the seconds of real waiting); the outcome is the trainer's.
    opened = 0

    def restarting() -> Session:
        nonlocal opened
        opened += 1
        if opened % 2:
            raise OperationalError("connect", {}, ConnectionRefusedError("the database restarts"))
        return sessions()

    monkeypatch.setattr(worker_hooks, "time", SimpleNamespace(monotonic=time.monotonic,
                                                              sleep=lambda s: None))  # fmt: skip
    monkeypatch.setattr(training, "Trainer", _FailsToTrain)
    run_job(job_id, cast(sessionmaker[Session], restarting), settings, WORKER)
    job, events = _outcome(sessions, job_id)
    reason = "training crashed at iteration 7: _Unexpected: the loader broke"
    assert (job.state, job.failure_reason, job.attempt) == (JobState.failed, reason, 1)
    assert events[-1] == reason
    assert opened >= 8  # every write above met a refusal first
