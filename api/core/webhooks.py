"""The webhook outbox, torch-free: the deliveries a state change adds to its own transaction.

A job or comparison that names a ``webhook`` URL gets a ``webhook_deliveries`` row for each
event, inserted uncommitted beside the state change (``api.core.jobstore``, job creation), so
the call is recorded exactly when the change is, whatever crashes next; the API's dispatcher
(``api.webhooks``) signs and sends it later, so training never waits for a receiver.

Events: ``job.queued``, ``job.running``, ``job.succeeded``, ``job.failed``, ``job.cancelled``
(to the job's URL), and ``comparison.running`` (its first job runs) and
``comparison.finished`` (every job of a fixed list of seeds ended) to the comparison's
(docs/webhooks.md). What stops a comparison with seeds until decided reports it with
:func:`comparison_event`.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core.db.models import (
    TERMINAL_STATES,
    Comparison,
    Job,
    JobState,
    WebhookDelivery,
    utcnow,
)
from api.core.db.session import dialect_insert


def _occurred(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def job_changed(
    session: Session, job_id: int, state: JobState, message: str = "", row: Job | None = None
) -> None:
    """Add, uncommitted, the deliveries job ``job_id`` entering ``state`` calls for: one to
    the job's webhook, if it names one, and for a comparison's job the comparison's events.
    ``row``: the job as just inserted, when the caller holds it (``jobstore.add_queued_jobs``),
    so it is not read back."""
    job: Any = row
    if job is None:
        job = session.execute(
            select(
                Job.tenant_id, Job.spec, Job.comparison_id, Job.arm, Job.seed, Job.attempt,
                Job.result, Job.failure_reason,
            ).where(Job.id == job_id)
        ).one()  # fmt: skip
    url = job.spec.get("webhook")
    if url:
        payload = {
            "event": f"job.{state}",
            "occurred_at": _occurred(utcnow()),
            "job": {
                "id": job_id, "name": job.spec.get("name"), "state": str(state),
                "comparison_id": job.comparison_id, "arm": job.arm, "seed": job.seed,
                "attempt": job.attempt, "message": message, "result": job.result,
                "failure_reason": job.failure_reason,
            },
        }  # fmt: skip
        session.add(
            WebhookDelivery(
                tenant_id=job.tenant_id, job_id=job_id, comparison_id=job.comparison_id,
                event=payload["event"], url=url, payload=payload,
            )
        )  # fmt: skip
    if job.comparison_id is not None:
        _comparison_changed(session, job.comparison_id, state)


def _comparison_changed(session: Session, comparison_id: int, state: JobState) -> None:
    if state == JobState.running:
        comparison_event(session, comparison_id, "comparison.running")
    elif state in TERMINAL_STATES and _fixed_seeds(session, comparison_id):
        # Locked, so that of two jobs ending at once on PostgreSQL the second waits for the
        # first's commit and sees it ended: the last to end sends comparison.finished. (FOR
        # NO KEY UPDATE: inserting a job of the comparison still goes on meanwhile.)
        session.execute(
            select(Comparison.id)
            .where(Comparison.id == comparison_id)
            .with_for_update(key_share=True)
        )
        unfinished = session.scalar(
            select(func.count()).where(
                Job.comparison_id == comparison_id, Job.state.not_in(TERMINAL_STATES)
            )
        )
        if not unfinished:
            comparison_event(session, comparison_id, "comparison.finished")


def _fixed_seeds(session: Session, comparison_id: int) -> bool:
    """Whether the comparison trains a fixed list of seeds: then its last job's end finishes
    it. One with seeds until decided may add a round instead; what stops it
    (``api.core.comparison_rounds``) sends its event."""
    spec = session.scalar(select(Comparison.spec).where(Comparison.id == comparison_id))
    return isinstance((spec or {}).get("seeds", []), list)


def comparison_event(
    session: Session, comparison_id: int, event: str, details: dict[str, Any] | None = None
) -> None:
    """Add, uncommitted, comparison ``event``'s delivery to the comparison's webhook, if it
    names one: once per comparison and event (a second call adds nothing). The payload holds
    the comparison's job counts by state and ``details``."""
    comparison = session.execute(
        select(Comparison.tenant_id, Comparison.name, Comparison.spec).where(
            Comparison.id == comparison_id
        )
    ).one()
    url = comparison.spec.get("webhook")
    if not url:
        return
    counts = session.execute(
        select(Job.state, func.count())
        .where(Job.comparison_id == comparison_id)
        .group_by(Job.state)
    ).all()
    payload = {
        "event": event,
        "occurred_at": _occurred(utcnow()),
        "comparison": {
            "id": comparison_id, "name": comparison.name,
            "jobs": {state: count for state, count in counts}, **(details or {}),
        },
    }  # fmt: skip
    values = {
        "tenant_id": comparison.tenant_id, "comparison_id": comparison_id, "event": event,
        "url": url, "payload": payload, "once_key": f"comparison:{comparison_id}:{event}",
        "state": "pending", "attempts": 0, "next_attempt_at": utcnow(), "created_at": utcnow(),
    }  # fmt: skip
    session.execute(
        dialect_insert(session)(WebhookDelivery)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["once_key"])
    )
