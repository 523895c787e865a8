"""The job writer checks and stores the submissions that waited together in one transaction,
in order, sends their tasks in that order, keeps each tenant within its limit of active jobs,
fails a refused submission alone, and writes nothing for a request given up; on PostgreSQL and
Redis."""

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DataError

from api.core.broker import create_celery
from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import Dataset, Job, JobEvent, JobState
from api.core.job_spec import JobCreate
from api.core.settings import Settings
from api.migrate import upgrade
from api.services.errors import Invalid, OverLimit, Unavailable
from api.services.job_writer import JobWriter


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def queue() -> str:
    """A task queue of the test's own."""
    return f"writer-{uuid.uuid4().hex[:8]}"


def _tenants(engine: Engine, *names: str) -> list[tuple[int, int]]:
    """A tenant per name, each with a ready dataset: their ids."""
    with make_session_factory(engine)() as session:
        rows = [Tenant(name=name) for name in names]
        session.add_all(rows)
        session.flush()
        datasets = [
            Dataset(tenant_id=row.id, name="d", path="d", class_names=["a"], num_train=100)
            for row in rows
        ]
        session.add_all(datasets)
        session.commit()
        return [(row.id, dataset.id) for row, dataset in zip(rows, datasets, strict=True)]


def _job(dataset_id: int, queue: str, seed: int) -> JobCreate:
    return JobCreate(model="yolov3-tiny-small", dataset_id=dataset_id, queue=queue, seed=seed)


@contextmanager
def _held_in_its_insert(
    engine: Engine, writer: JobWriter, tenant_id: int, body: JobCreate
) -> Iterator[Future[Job]]:
    """``body`` submitted, its group held in its INSERT until the block ends (the table
    locked): what is submitted meanwhile waits for the writer, together."""
    with engine.connect() as connection:
        connection.execute(text("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE"))
        first = writer.submit(tenant_id, body)
        _wait_for_blocked_insert(engine)
        yield first
        connection.commit()


_WAITING_FOR_JOBS = text(
    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'jobs'::regclass"
)


def _wait_for_blocked_insert(engine: Engine) -> None:
    deadline = time.monotonic() + 10
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            if connection.scalar(_WAITING_FOR_JOBS):
                return
            time.sleep(0.02)
    raise AssertionError("the writer never reached its INSERT")


@pytest.fixture
def writer_for(engine: Engine, redis_url: str) -> Iterator[Callable[..., JobWriter]]:
    """Job writers on the test's database and Redis, with the settings given as keywords;
    each stopped when the test ends."""
    made: list[JobWriter] = []

    def make(**settings: Any) -> JobWriter:
        celery = create_celery(Settings(broker_url=redis_url, **settings))
        made.append(JobWriter(make_session_factory(engine), celery, Settings(**settings)))
        return made[-1]

    yield make
    for writer in made:
        writer.stop()


def _sent(redis_url: str, queue: str, count: int) -> list[int]:
    """The job ids of the first ``count`` tasks in ``queue``, as a worker takes them."""
    celery = create_celery(Settings(broker_url=redis_url))
    received = []
    with celery.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue)
        for _ in range(count):
            message = simple.get(timeout=5)
            received.append(message.payload[0][0])  # Celery protocol 2: (args, kwargs, embed)
            message.ack()
        simple.close()
    return received


def test_submissions_waiting_together_are_one_transaction_in_order(
    engine: Engine, redis_url: str, queue: str, writer_for: Callable[..., JobWriter]
) -> None:
    ((tenant, dataset),) = _tenants(engine, "alice")
    writer = writer_for()
    with _held_in_its_insert(engine, writer, tenant, _job(dataset, queue, 0)) as first:
        group = [writer.submit(tenant, _job(dataset, queue, seed)) for seed in range(1, 11)]
        given_up = writer.submit(tenant, _job(dataset, queue, 99))
        assert given_up.cancel()  # its client went away before it was written
    jobs = [done.result(timeout=10) for done in [first, *group]]
    ids = [job.id for job in jobs]
    assert [job.seed for job in jobs] == list(range(11)) and ids == sorted(ids)
    assert all(job.state == JobState.queued and job.tenant_id == tenant for job in jobs)
    assert all(job.resolved and job.max_batches for job in jobs)  # checked and resolved
    with engine.connect() as connection:
        # Rows written by one transaction carry its id (xmin): the first job alone, then the
        # ten that waited for it together.
        stored = connection.execute(text("SELECT id, seed, xmin::text FROM jobs ORDER BY id")).all()
        events = connection.execute(
            select(JobEvent.job_id, JobEvent.message).order_by(JobEvent.id)
        ).all()
    assert [row.id for row in stored] == ids  # nothing of the given-up request
    assert len({row.xmin for row in stored[1:]}) == 1 and stored[0].xmin != stored[1].xmin
    # Each job's events in job order, its "submitted" first.
    assert [job_id for job_id, _ in events] == sorted(job_id for job_id, _ in events)
    assert [m for job_id, m in events if m == "submitted"] == ["submitted"] * len(jobs)
    assert {job_id for job_id, m in events if m == "submitted"} == set(ids)
    assert _sent(redis_url, queue, 11) == ids


def test_a_group_keeps_each_tenant_within_its_limit_of_active_jobs(
    engine: Engine, redis_url: str, queue: str, writer_for: Callable[..., JobWriter]
) -> None:
    (alice, alices), (bob, bobs) = _tenants(engine, "alice", "bob")
    writer = writer_for(max_active_jobs=3)
    with _held_in_its_insert(engine, writer, alice, _job(alices, queue, 0)) as first:
        # None of these was stored when the others were handed over: all would see room.
        group = [writer.submit(alice, _job(alices, queue, seed)) for seed in range(1, 5)]
        other = writer.submit(bob, _job(bobs, queue, 5))
    first.result(timeout=10)
    outcomes = [_outcome(done) for done in group]
    assert other.result(timeout=10).tenant_id == bob
    assert outcomes[:2] == ["stored", "stored"]
    assert all("you have 3 jobs queued or running and may have 3" in o for o in outcomes[2:])
    with make_session_factory(engine)() as session:
        seeds = session.scalars(select(Job.seed).where(Job.tenant_id == alice)).all()
    assert sorted(seed or 0 for seed in seeds) == [0, 1, 2] and None not in seeds


def _outcome(done: Future[Job]) -> str:
    try:
        done.result(timeout=10)
    except (OverLimit, Invalid) as refusal:
        return str(refusal.detail)
    return "stored"


def test_a_refused_check_fails_its_own_submission_only(
    engine: Engine, redis_url: str, queue: str, writer_for: Callable[..., JobWriter]
) -> None:
    (alice, alices), (_, bobs) = _tenants(engine, "alice", "bob")
    writer = writer_for()
    with _held_in_its_insert(engine, writer, alice, _job(alices, queue, 0)) as first:
        before = writer.submit(alice, _job(alices, queue, 1))
        # Another tenant's dataset is no dataset of alice's; nor is one that does not exist.
        others = writer.submit(alice, _job(bobs, queue, 2))
        missing = writer.submit(alice, _job(bobs + 1000, queue, 3))
        unknown_model = writer.submit(
            alice, _job(alices, queue, 4).model_copy(update={"model": "nope"})
        )
        after = writer.submit(alice, _job(alices, queue, 5))
    assert [done.result(timeout=10).seed for done in (first, before, after)] == [0, 1, 5]
    assert f"no dataset {bobs}; see GET /v1/datasets" in _outcome(others)
    assert f"no dataset {bobs + 1000}; see GET /v1/datasets" in _outcome(missing)
    assert "nope" in _outcome(unknown_model)
    assert _sent(redis_url, queue, 3) == sorted(done.result().id for done in (first, before, after))


def test_a_value_the_database_refuses_fails_its_own_submission_only(
    engine: Engine, redis_url: str, queue: str, writer_for: Callable[..., JobWriter]
) -> None:
    ((tenant, dataset),) = _tenants(engine, "alice")
    writer = writer_for()
    # jobs.queue holds 64 characters; the schema's pattern would refuse this one first.
    too_long = _job(dataset, queue, 2).model_copy(update={"queue": "q" * 100})
    with _held_in_its_insert(engine, writer, tenant, _job(dataset, queue, 0)) as first:
        before = writer.submit(tenant, _job(dataset, queue, 1))
        refused = writer.submit(tenant, too_long)
        after = writer.submit(tenant, _job(dataset, queue, 3))
    assert [done.result(timeout=10).seed for done in (first, before, after)] == [0, 1, 3]
    with pytest.raises(DataError):
        refused.result(timeout=10)
    assert _sent(redis_url, queue, 3) == sorted(done.result().id for done in (first, before, after))


def test_what_was_handed_over_before_a_stop_is_written_and_later_submissions_refused(
    engine: Engine, redis_url: str, queue: str, writer_for: Callable[..., JobWriter]
) -> None:
    ((tenant, dataset),) = _tenants(engine, "alice")
    writer = writer_for()
    pending = [writer.submit(tenant, _job(dataset, queue, seed)) for seed in range(3)]
    writer.stop()
    assert [done.result(timeout=10).seed for done in pending] == [0, 1, 2]
    late = writer.submit(tenant, _job(dataset, queue, 3))
    with pytest.raises(Unavailable, match="stopping"):
        late.result(timeout=10)
    with make_session_factory(engine)() as session:
        assert session.scalar(select(Job.id).where(Job.seed == 3)) is None
