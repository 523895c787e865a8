"""Seeds until decided, one step at a time on a real database (PostgreSQL and SQLite): the
jobs' final AP is written as a worker would record it, so each decision is known in advance;
and two processes that see the last job end at the same moment add one round."""

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

from api.core.comparison_rounds import advance_comparison, advance_waiting_comparisons
from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import Comparison, ComparisonStatus, Job, JobState, WebhookDelivery
from api.core.job_spec import ComparisonCreate
from api.core.settings import Settings
from api.migrate import upgrade


@pytest.fixture
def database(database_url: str) -> Iterator[Engine]:
    """A migrated database (PostgreSQL, then SQLite) with one tenant."""
    upgrade(database_url)
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        session.add(Tenant(name="t"))
        session.commit()
    yield engine
    engine.dispose()


@pytest.fixture
def session(database: Engine) -> Iterator[Session]:
    with make_session_factory(database)() as s:
        yield s


def _limit(max_active_jobs: int) -> Settings:
    return Settings(max_active_jobs=max_active_jobs)


SETTINGS = _limit(100)


def _comparison(
    session: Session, seeds: Any, target_effect: float | None = None, webhook: str | None = None
) -> int:
    """A comparison of arms ``a`` (reference) and ``b`` with its first round of jobs queued;
    ``webhook`` named by the comparison and by its base (so by every job)."""
    base = {"model": "yolov3-tiny-small", "dataset_id": 1, "webhook": webhook}
    spec = ComparisonCreate.model_validate({
        "base": base, "arms": [{"name": "a"}, {"name": "b"}], "seeds": seeds,
        "target_effect": target_effect, "webhook": webhook,
    })  # fmt: skip
    tenant = session.scalars(select(Tenant.id)).one()
    row = Comparison(tenant_id=tenant, spec=spec.model_dump(mode="json"))
    session.add(row)
    session.flush()
    for arm, seed, raw in spec.job_specs():
        session.add(Job(tenant_id=tenant, comparison_id=row.id, arm=arm, seed=seed, spec=raw,
                        resolved={"max_batches": 10}, max_batches=10))  # fmt: skip
    session.commit()
    return row.id


def _finish(
    session: Session, comparison_id: int, ap: dict[str, float], fail: tuple[str, ...] = ()
) -> None:
    """Every queued job of the comparison ends: arm ``a`` with AP 0.30, arm ``b`` with
    0.30 + ``ap[seed]``; the arms named in ``fail`` fail instead."""
    queued = select(Job).where(Job.comparison_id == comparison_id, Job.state == JobState.queued)
    for job in session.scalars(queued):
        if job.arm in fail:
            job.state, job.failure_reason = JobState.failed, "crashed"
        else:
            job.state = JobState.succeeded
            job.result = {"AP": 0.30 + (ap[str(job.seed)] if job.arm == "b" else 0.0)}
    session.commit()


def _state(session: Session, comparison_id: int) -> tuple[str, int, list[int | None]]:
    session.expire_all()
    row = session.get_one(Comparison, comparison_id)
    seeds = session.scalars(
        select(Job.seed).where(Job.comparison_id == comparison_id, Job.arm == "b").order_by(Job.id)
    )
    return row.status, row.rounds, list(seeds)


def test_a_clear_gain_stops_once_the_sequence_excludes_zero(session: Session) -> None:
    cid = _comparison(session, {"min": 2, "max": 10, "round": 2})
    sent: list[tuple[str | None, int | None]] = []

    def send(job: Job) -> None:
        sent.append((job.arm, job.seed))

    # Jobs still queued: nothing to decide yet.
    assert advance_comparison(session, cid, SETTINGS, send) is None
    gain = {str(seed): 0.05 for seed in range(10)}  # every pair +5 AP points
    _finish(session, cid, gain)
    # Two pairs: the confidence sequence is still the whole line (finite from 4 pairs).
    assert advance_comparison(session, cid, SETTINGS, send) == ComparisonStatus.running
    assert _state(session, cid) == ("running", 2, [0, 1, 2, 3])
    assert sent == [("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    assert advance_comparison(session, cid, SETTINGS, send) is None  # the new round runs
    _finish(session, cid, gain)

    assert advance_comparison(session, cid, SETTINGS, send) == ComparisonStatus.decided
    row = session.get_one(Comparison, cid)
    assert row.decided_at is not None
    assert row.stop_reason is not None and "decided after 4 seeds" in row.stop_reason
    assert "a gain" in row.stop_reason and "excludes 0" in row.stop_reason
    # In AP points, as the table beside it (+5 on every pair: no spread).
    assert "confidence sequence [+5, +5] AP excludes 0" in row.stop_reason
    assert advance_comparison(session, cid, SETTINGS, send) is None  # stopped: stays stopped
    assert len(sent) == 4


def test_the_stop_and_the_new_rounds_jobs_reach_the_webhooks(session: Session) -> None:
    cid = _comparison(session, {"min": 2, "max": 10, "round": 2}, webhook="https://hooks.test/x")
    gain = {str(seed): 0.05 for seed in range(10)}
    _finish(session, cid, gain)
    assert advance_comparison(session, cid, SETTINGS, lambda job: None) == "running"
    _finish(session, cid, gain)
    assert advance_comparison(session, cid, SETTINGS, lambda job: None) == "decided"

    deliveries = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
    queued = [d.payload["job"]["seed"] for d in deliveries if d.event == "job.queued"]
    assert sorted(queued) == [2, 2, 3, 3]  # the second round's jobs, in both arms
    (stop,) = [d for d in deliveries if d.comparison_id == cid and d.job_id is None]
    assert stop.event == "comparison.decided"
    assert stop.payload["comparison"]["status"] == "decided"
    assert "excludes 0" in stop.payload["comparison"]["stop_reason"]


def test_no_difference_runs_to_max_and_failed_seeds_count_as_tried(session: Session) -> None:
    cid = _comparison(session, {"min": 2, "max": 5, "round": 2})
    noise = {str(seed): 0.01 * (-1) ** seed for seed in range(5)}  # +1, -1, +1, ... AP points
    _finish(session, cid, noise)
    assert advance_comparison(session, cid, SETTINGS, lambda job: None) == "running"
    _finish(session, cid, noise, fail=("b",))  # seeds 2 and 3 lose their pairs
    assert advance_comparison(session, cid, SETTINGS, lambda job: None) == "running"
    # The third round is cut to max: one seed.
    assert _state(session, cid) == ("running", 3, [0, 1, 2, 3, 4])
    _finish(session, cid, noise)

    assert advance_comparison(session, cid, SETTINGS, lambda job: None) == "max_reached"
    row = session.get_one(Comparison, cid)
    assert row.stop_reason is not None
    assert row.stop_reason.startswith("5 of at most 5 seeds: b vs a (3 pairs): undecided")


def test_a_round_waits_for_room_under_the_job_limit(session: Session) -> None:
    cid = _comparison(session, {"min": 2, "max": 4, "round": 2})
    _finish(session, cid, {"0": 0.01, "1": 0.02})
    tenant = session.scalars(select(Tenant.id)).one()
    session.add_all(Job(tenant_id=tenant, spec={}) for _ in range(3))  # three other jobs queued
    session.commit()

    # Four jobs more would make 7 of at most 6: the round waits, the comparison stays running.
    assert advance_waiting_comparisons(session, _limit(6), lambda job: None) == {}
    assert _state(session, cid) == ("running", 1, [0, 1])
    assert advance_waiting_comparisons(session, _limit(7), lambda job: None) == {cid: "running"}
    assert _state(session, cid) == ("running", 2, [0, 1, 2, 3])


def test_fixed_seeds_finish_and_a_cancel_stops_the_rounds(session: Session) -> None:
    # A row this code cannot read stays as it is, and does not hold up the others.
    unreadable = Comparison(tenant_id=session.scalars(select(Tenant.id)).one(), spec={"x": 1})
    session.add(unreadable)
    fixed = _comparison(session, [0, 1])
    _finish(session, fixed, {"0": 0.0, "1": 0.0})
    rounds = _comparison(session, {"min": 2, "max": 8})
    for job in session.scalars(select(Job).where(Job.comparison_id == rounds)):
        job.state, job.cancel_requested = JobState.cancelled, True
    session.commit()

    moved = advance_waiting_comparisons(session, SETTINGS, lambda job: None)
    assert moved == {fixed: "finished", rounds: "cancelled"}
    assert _state(session, rounds)[:2] == ("cancelled", 1)
    assert "was cancelled on request" in str(session.get_one(Comparison, rounds).stop_reason)
    assert session.get_one(Comparison, unreadable.id).status == "running"


def test_every_job_failing_stops_the_rounds(session: Session) -> None:
    cid = _comparison(session, {"min": 2, "max": 30})
    _finish(session, cid, {}, fail=("a", "b"))
    assert advance_comparison(session, cid, SETTINGS, lambda job: None) == "failed"
    assert _state(session, cid)[:2] == ("failed", 1)


def test_two_processes_seeing_the_last_job_end_add_one_round(database: Engine) -> None:
    """Both steps read every job ended and round 1, then both try to add round 2 at once:
    the conditional UPDATE on the round counter lets one through."""
    sessions = make_session_factory(database)
    with sessions() as session:
        cid = _comparison(session, {"min": 2, "max": 10, "round": 3})
        _finish(session, cid, {"0": 0.01, "1": 0.02})
    both_read = threading.Barrier(2, timeout=30)

    def before_update(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("UPDATE comparisons SET rounds"):
            both_read.wait()  # each has seen round 1 with every job ended

    event.listen(database, "before_cursor_execute", before_update)
    results: list[object] = []

    def step() -> None:
        with sessions() as session:
            results.append(advance_comparison(session, cid, SETTINGS, lambda job: None))

    try:
        threads = [threading.Thread(target=step) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        event.remove(database, "before_cursor_execute", before_update)

    assert sorted(map(str, results)) == ["None", "running"]
    with sessions() as session:
        assert _state(session, cid) == ("running", 2, [0, 1, 2, 3, 4])
