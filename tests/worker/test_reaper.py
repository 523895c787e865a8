"""The stale-job reaper on a real database (PostgreSQL and SQLite)."""

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core import jobstore as job_ops
from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import Job, JobEvent, JobState, utcnow
from api.migrate import upgrade

STALE = timedelta(seconds=60)


@pytest.fixture(params=["postgres", "sqlite"])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    url = (
        request.getfixturevalue("postgres_url")
        if request.param == "postgres"
        else f"sqlite:///{tmp_path / 'reaper.db'}"
    )
    upgrade(url)
    engine = make_engine(url)
    with make_session_factory(engine)() as s:
        s.add(Tenant(name="t"))
        s.commit()
        yield s
    engine.dispose()


def _running(session: Session, silent_for: timedelta, **fields: object) -> int:
    tenant = session.scalars(select(Tenant.id)).one()
    job = Job(tenant_id=tenant, spec={}, state=JobState.running, worker="host:42",
              heartbeat_at=utcnow() - silent_for, **fields)  # fmt: skip
    session.add(job)
    session.commit()
    return job.id


def _state(session: Session, job_id: int) -> Job:
    session.expire_all()
    return session.get_one(Job, job_id)


def test_stale_jobs_are_requeued_failed_or_cancelled_and_live_ones_left(session: Session) -> None:
    alive = _running(session, timedelta(seconds=5), attempt=1)
    lost = _running(session, timedelta(minutes=5), attempt=1, max_attempts=3)
    exhausted = _running(session, timedelta(minutes=5), attempt=3, max_attempts=3)
    cancelling = _running(session, timedelta(minutes=5), attempt=1, cancel_requested=True)
    sent: list[tuple[int, str]] = []

    requeued = job_ops.reap_stale_jobs(session, STALE, send=lambda j: sent.append((j.id, j.queue)))

    assert requeued == [lost] and sent == [(lost, "cpu")]
    assert _state(session, alive).state == JobState.running
    assert (_state(session, lost).state, _state(session, lost).worker) == (JobState.queued, None)
    failed = _state(session, exhausted)
    assert failed.state == JobState.failed
    assert "each of its 3 attempts" in str(failed.failure_reason)
    assert _state(session, cancelling).state == JobState.cancelled
    events = session.scalars(select(JobEvent).where(JobEvent.job_id == lost)).all()
    assert "re-queued for attempt 2 of 3" in events[-1].message
    assert "host:42 stopped sending heartbeats" in events[-1].message
    # A second round finds nothing more to do: each job is recovered once.
    assert job_ops.reap_stale_jobs(session, STALE, send=lambda j: sent.append((j.id, ""))) == []
    assert len(sent) == 1


def test_a_broker_error_leaves_the_job_for_the_next_round(session: Session) -> None:
    lost = _running(session, timedelta(minutes=5), attempt=1)

    def broker_down(job: Job) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        job_ops.reap_stale_jobs(session, STALE, send=broker_down)
    assert _state(session, lost).state == JobState.running
    assert job_ops.reap_stale_jobs(session, STALE, send=lambda j: None) == [lost]


def test_a_claimed_job_beats_and_a_requeued_one_is_claimed_again(session: Session) -> None:
    lost = _running(session, timedelta(minutes=5), attempt=1)
    job_ops.reap_stale_jobs(session, STALE, send=lambda j: None)
    assert job_ops.claim_job(session, lost, "host:43")
    job = _state(session, lost)
    assert (job.state, job.attempt, job.worker) == (JobState.running, 2, "host:43")
    before = job.heartbeat_at
    job_ops.touch_heartbeat(session, lost, "host:43")
    after = _state(session, lost).heartbeat_at
    assert before is not None and after is not None and after > before


def test_a_worker_taken_for_dead_learns_it_and_cannot_record_an_outcome(session: Session) -> None:
    slow = _running(session, timedelta(minutes=5), attempt=1)  # worker host:42, silent
    job_ops.reap_stale_jobs(session, STALE, send=lambda j: None)
    assert job_ops.claim_job(session, slow, "host:43")
    # host:42 was alive after all: its next flush is told to stop, and its outcome is ignored.
    assert job_ops.heartbeat(session, slow, 7, "host:42") == "lost"
    assert not job_ops.finish_job(session, slow, JobState.succeeded, worker="host:42")
    assert job_ops.heartbeat(session, slow, 3, "host:43") == "run"
    job_ops.request_cancel(session, slow)
    assert job_ops.heartbeat(session, slow, 4, "host:43") == "cancel"
    assert job_ops.finish_job(session, slow, JobState.cancelled, worker="host:43")
    job = _state(session, slow)
    assert (job.state, job.iteration) == (JobState.cancelled, 4)


def test_non_finite_metric_values_are_not_stored(session: Session) -> None:
    job_id = _running(session, timedelta(0))
    rows = job_ops.metric_rows(7, {"loss": float("nan"), "lr": 0.01, "x": float("inf")})
    assert [(key, step) for key, step, *_ in rows] == [("lr", 7)]
    job_ops.insert_metrics(session, job_id, rows)  # SQLite would refuse a NaN as NULL


def _queued(session: Session, sent_ago: timedelta, queue: str = "cpu") -> int:
    tenant = session.scalars(select(Tenant.id)).one()
    job = Job(tenant_id=tenant, spec={}, queue=queue, sent_at=utcnow() - sent_ago)
    session.add(job)
    session.commit()
    return job.id


def test_queued_jobs_whose_queue_is_empty_are_sent_again_once(session: Session) -> None:
    lost = _queued(session, timedelta(minutes=5))
    fresh = _queued(session, timedelta(seconds=5))
    backlog = _queued(session, timedelta(minutes=5), queue="gpu")
    running = _running(session, timedelta(seconds=1), attempt=1)
    waiting = {"cpu": 0, "gpu": 3}  # the gpu queue still holds tasks: its workers are busy
    sent: list[int] = []

    def resend() -> list[int]:
        return job_ops.resend_lost_tasks(
            session, STALE, waiting_in_broker=waiting.__getitem__, send=lambda j: sent.append(j.id)
        )

    before = _state(session, lost).sent_at
    assert resend() == [lost] and sent == [lost]
    job = _state(session, lost)
    assert before is not None and job.sent_at is not None
    assert job.state == JobState.queued and job.sent_at > before
    events = session.scalars(select(JobEvent).where(JobEvent.job_id == lost)).all()
    assert "still queued 60 s after its task was sent, and queue 'cpu' holds no task" in (
        events[-1].message
    )
    # The clock starts again: the next round sends nothing, nor does one for the other jobs.
    assert resend() == [] and sent == [lost]
    for job_id, state in ((fresh, JobState.queued), (backlog, JobState.queued),
                          (running, JobState.running)):  # fmt: skip
        assert _state(session, job_id).state == state
    waiting["gpu"] = 0
    assert resend() == [backlog]


def test_a_broker_error_leaves_a_lost_task_for_the_next_round(session: Session) -> None:
    lost = _queued(session, timedelta(minutes=5))
    before = _state(session, lost).sent_at

    def broker_down(job: Job) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        job_ops.resend_lost_tasks(session, STALE, lambda queue: 0, send=broker_down)
    assert _state(session, lost).sent_at == before
    assert job_ops.resend_lost_tasks(session, STALE, lambda queue: 0, lambda j: None) == [lost]


def test_a_requeued_job_is_stamped_as_sent(session: Session) -> None:
    lost = _running(session, timedelta(minutes=5), attempt=1)
    job_ops.reap_stale_jobs(session, STALE, send=lambda j: None)
    assert _state(session, lost).sent_at is not None  # running jobs had none
