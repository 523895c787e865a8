"""Job bookkeeping in the database, torch-free: claim, events, metrics, heartbeat, outcome.

Shared by the worker (which trains) and the API (which cancels); each function commits.
"""

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.orm import Session

from api.core.db.models import Checkpoint, Job, JobEvent, JobState, Metric, utcnow
from api.core.db.session import dialect_insert
from api.core.webhooks import job_changed


def add_event(session: Session, job_id: int, state: str, message: str = "") -> None:
    session.add(JobEvent(job_id=job_id, state=state, message=message))


# Core statements on the tables, not ORM units of work: a submission is the API's busiest
# write, and the ORM's flush of a Job and its event cost more CPU than the database's work.
_JOBS, _EVENTS = cast(Table, Job.__table__), cast(Table, JobEvent.__table__)


# What an insert reads back of a job: every column but the two it was handed whole.
_RETURNED = [column for column in _JOBS.c if column.name not in ("spec", "resolved")]


def add_queued_jobs(
    session: Session, jobs: Sequence[tuple[dict[str, Any], Sequence[str]]]
) -> list[Job]:
    """Insert, uncommitted, queued jobs: for each, ``fields`` (the columns not left to their
    defaults, the same columns for every job) and its events, ``messages[0]`` its transition
    to queued (with the webhook deliveries that calls for), the others notes on it.

    One INSERT of all the jobs and one of all their events, whatever their number: a group of
    submissions costs the database about what one does (``api.services.job_writer``). Returns
    the jobs as inserted, in order: transient objects outside the session."""
    if not jobs:
        return []
    inserted = session.execute(
        insert(_JOBS).returning(*_RETURNED, sort_by_parameter_order=True),
        [fields for fields, _ in jobs],
    )
    created = []
    events = []
    for (fields, messages), row in zip(jobs, inserted, strict=True):
        job = Job(**row._asdict(), spec=fields["spec"], resolved=fields.get("resolved"))
        created.append(job)
        events += [{"job_id": job.id, "state": JobState.queued, "message": m} for m in messages]
    session.execute(insert(_EVENTS), events)
    for job, (_, messages) in zip(created, jobs, strict=True):
        job_changed(session, job.id, JobState.queued, messages[0], job)
    return created


def add_transition(session: Session, job_id: int, state: JobState, message: str = "") -> None:
    """Record, uncommitted, that the job entered ``state``: its event, and the webhook
    deliveries the change calls for (``api.core.webhooks``), in the same transaction."""
    add_event(session, job_id, state, message)
    job_changed(session, job_id, state, message)


def claim_job(session: Session, job_id: int, worker: str) -> bool:
    """Move a queued job to running for ``worker``, in one conditional UPDATE.

    Returns False (and changes nothing) when the job is not queued: a duplicate delivery, a
    cancelled job, or one another worker already runs.
    """
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.queued)
        .values(
            state=JobState.running,
            worker=worker,
            attempt=Job.attempt + 1,
            started_at=func.coalesce(Job.started_at, now),
            heartbeat_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    claimed = result.rowcount == 1  # type: ignore[attr-defined]
    if claimed:
        add_transition(session, job_id, JobState.running, f"claimed by {worker}")
    session.commit()
    return claimed


def finish_job(
    session: Session,
    job_id: int,
    state: JobState,
    message: str = "",
    *,
    result: dict[str, Any] | None = None,
    failure_reason: str | None = None,
    worker: str | None = None,
) -> bool:
    """Record the outcome of a job (and its event). With ``worker``, only while the job is
    that worker's running job; returns whether it was recorded."""
    condition = _owned(job_id, worker) if worker is not None else Job.id == job_id
    finished = session.execute(
        update(Job)
        .where(condition)
        .values(
            state=state,
            finished_at=utcnow(),
            result=result,
            failure_reason=failure_reason,
        )
        .execution_options(synchronize_session=False)
    )
    if finished.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return False
    add_transition(session, job_id, state, message or failure_reason or "")
    session.commit()
    return True


def save_resolved(
    session: Session, job_id: int, resolved: dict[str, Any], max_batches: int
) -> None:
    """Store the worker's resolution of the job, and log the notes the API's had not (what
    only the dataset could tell, such as fitted anchors) in the job's event log."""
    before = session.scalar(select(Job.resolved).where(Job.id == job_id)) or {}
    for note in resolved.get("notes", []):
        if note not in before.get("notes", []):
            add_event(session, job_id, JobState.running, f"note: {note}")
    session.execute(
        update(Job).where(Job.id == job_id).values(resolved=resolved, max_batches=max_batches)
    )
    session.commit()


MetricRow = tuple[str, int, float | None, float, datetime]
"""``(key, step, epoch, value, at)``"""


def insert_metrics(session: Session, job_id: int, rows: Sequence[MetricRow]) -> None:
    """Append metric rows; a (job, key, step) already stored is kept as is, so a resumed
    attempt that repeats steps adds no duplicates."""
    if not rows:
        return
    values = [
        {"job_id": job_id, "key": k, "step": s, "epoch": e, "value": v, "at": at}
        for k, s, e, v, at in rows
    ]
    statement = dialect_insert(session)(Metric).on_conflict_do_nothing(
        index_elements=["job_id", "key", "step"]
    )
    session.execute(statement, values)
    session.commit()


def delete_metrics_after(session: Session, job_id: int, step: int) -> None:
    """Remove the job's metric rows past ``step`` (a rollback to that step's checkpoint
    replays them, and ``insert_metrics`` would otherwise keep the diverged values), and bump
    the job's ``metrics_version`` with them, so the API builds its pages again."""
    session.execute(delete(Metric).where(Metric.job_id == job_id, Metric.step > step))
    version = Job.metrics_version + 1
    session.execute(update(Job).where(Job.id == job_id).values(metrics_version=version))


def _owned(job_id: int, worker: str) -> Any:
    return (Job.id == job_id) & (Job.state == JobState.running) & (Job.worker == worker)


def heartbeat(
    session: Session, job_id: int, iteration: int, worker: str
) -> Literal["run", "cancel", "lost"]:
    """Stamp the heartbeat and progress of ``worker``'s job. Says whether to go on, stop for a
    cancel request, or stop because the job is no longer this worker's (the reaper took it
    for dead and another worker may run it now)."""
    owned = session.execute(
        update(Job)
        .where(_owned(job_id, worker))
        .values(heartbeat_at=utcnow(), iteration=iteration)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if owned.rowcount != 1:  # type: ignore[attr-defined]
        return "lost"
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return "cancel" if cancel else "run"


def touch_heartbeat(session: Session, job_id: int, worker: str) -> None:
    """Stamp the heartbeat of ``worker``'s running job: its process is alive."""
    session.execute(
        update(Job)
        .where(_owned(job_id, worker))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


def reap_stale_jobs(
    session: Session, stale_after: timedelta, send: Callable[[Job], None]
) -> list[int]:
    """Recover running jobs whose worker stopped sending heartbeats for ``stale_after``.

    Each is re-queued (and ``send`` delivers its task; it resumes from its last checkpoint)
    while it has attempts left, else failed; one whose cancel was requested is cancelled. Each
    transition is a conditional UPDATE committed only after ``send`` returns, so concurrent
    reapers recover a job once, and a broker error leaves the job for the next round.
    Returns the ids of the re-queued jobs.
    """
    cutoff = utcnow() - stale_after
    stale = session.scalars(
        select(Job).where(Job.state == JobState.running, Job.heartbeat_at < cutoff)
    ).all()
    requeued = []
    for job in stale:
        values: dict[str, Any]
        lost = f"worker {job.worker} stopped sending heartbeats (last {job.heartbeat_at:%H:%M:%S})"
        if job.cancel_requested:
            state, values = JobState.cancelled, {"finished_at": utcnow()}
            message = f"{lost}; cancelled as requested"
        elif job.attempt < job.max_attempts:
            state, values = JobState.queued, {"worker": None, "sent_at": utcnow()}
            message = f"{lost}; re-queued for attempt {job.attempt + 1} of {job.max_attempts}"
        else:
            message = f"{lost} on each of its {job.attempt} attempts; not retried again"
            state, values = JobState.failed, {"finished_at": utcnow(), "failure_reason": message}
        moved = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == JobState.running, Job.heartbeat_at < cutoff)
            .values(state=state, **values)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()  # it sent a heartbeat meanwhile, or another reaper took it
            continue
        add_transition(session, job.id, state, message)
        if state == JobState.queued:
            try:
                send(job)
            except Exception:
                session.rollback()
                raise
            requeued.append(job.id)
        session.commit()
    return requeued


def resend_lost_tasks(
    session: Session,
    waited: timedelta,
    waiting_in_broker: Callable[[str], int],
    send: Callable[[Job], None],
) -> list[int]:
    """Send again the task of each job still queued ``waited`` after its task was last sent,
    when its queue holds no message in the broker: the message was lost (a broker restarted
    without persistence), and the job would otherwise wait forever.

    ``waiting_in_broker(queue)`` counts the messages waiting in a queue. A queue that holds
    any is left alone (its workers are busy, or there are none yet), so a long wait does not
    pile up copies. A copy sent anyway is harmless: the claim trains a job once. Each re-send
    is a conditional UPDATE of ``sent_at`` committed after ``send`` returns, so concurrent
    reapers send once, and a broker error leaves the job for the next round. Returns the ids
    of the jobs whose task was sent again.
    """
    now = utcnow()
    overdue = session.scalars(
        select(Job).where(Job.state == JobState.queued, Job.sent_at < now - waited).order_by(Job.id)
    ).all()
    empty: dict[str, bool] = {}
    resent = []
    for job in overdue:
        if job.queue not in empty:
            empty[job.queue] = waiting_in_broker(job.queue) == 0
        if not empty[job.queue]:
            continue
        last_sent = job.sent_at
        moved = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == JobState.queued, Job.sent_at == last_sent)
            .values(sent_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()  # claimed or cancelled meanwhile, or another reaper sent it
            continue
        add_event(
            session, job.id, JobState.queued,
            f"still queued {waited.total_seconds():g} s after its task was sent, and queue "
            f"{job.queue!r} holds no task: sent again (a broker restart lost it?)",
        )  # fmt: skip
        try:
            send(job)
        except Exception:
            session.rollback()
            raise
        session.commit()
        resent.append(job.id)
    return resent


def record_checkpoint(
    session: Session,
    job_id: int,
    name: str,
    *,
    iteration: int,
    metrics: dict[str, float],
    size: int,
    sha256: str,
    path: str,
) -> None:
    """Insert or refresh the row of checkpoint ``name`` (``last`` and ``best`` are rewritten)."""
    row = session.scalar(
        select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == name)
    )
    if row is None:
        row = Checkpoint(job_id=job_id, name=name)
        session.add(row)
    row.iteration, row.metrics, row.size, row.sha256, row.path = (
        iteration,
        metrics,
        size,
        sha256,
        path,
    )
    row.created_at = utcnow()
    session.commit()


def request_cancel(session: Session, job_id: int) -> JobState:
    """Cancel a job: a queued one at once, a running one at its next iteration boundary.

    Returns the job's state afterwards.
    """
    cancelled = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.queued)
        .values(state=JobState.cancelled, finished_at=utcnow(), cancel_requested=True)
    )
    if cancelled.rowcount == 1:  # type: ignore[attr-defined]
        add_transition(session, job_id, JobState.cancelled, "cancelled before it started")
        session.commit()
        return JobState.cancelled
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.running)
        .values(cancel_requested=True)
    )
    session.commit()
    return JobState(session.execute(select(Job.state).where(Job.id == job_id)).scalar_one())


def metric_rows(
    step: int,
    metrics: dict[str, float],
    prefix: str = "",
    epoch: float | None = None,
    skip: Iterable[str] = ("iteration",),
) -> list[MetricRow]:
    """Rows of one step's metrics. Non-finite values are left out: SQLite cannot store NaN
    (it reads as NULL), and a loss that became non-finite is in the job's failure reason."""
    now = utcnow()
    skipped = set(skip)
    return [
        (prefix + k, step, epoch, float(v), now)
        for k, v in metrics.items()
        if k not in skipped and math.isfinite(v)
    ]
