"""Comparisons that add seeds in rounds until decided (docs/comparisons.md): once every job of
a comparison has ended, stop it (decided, max reached, cancelled, failed, or finished for fixed
seeds) or add the next round of seeds.

Called by the worker after each job it ends and by the API's reaper (api.reaper) for jobs
that ended elsewhere (cancelled, failed by the reaper). Each transition is a conditional UPDATE
on the comparison's ``status`` and ``rounds``, so processes that see the last job end at the
same moment add one round, not two.
"""

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select, update
from sqlalchemy.orm import Session

from ae_model.compare import METRICS, ArmResult, summarize
from ae_model.compare.stats import SequentialDecision, sequential_decision
from api.core import jobstore
from api.core.db.models import (
    TERMINAL_STATES,
    Comparison,
    ComparisonStatus,
    Job,
    JobState,
    utcnow,
)
from api.core.job_spec import ComparisonCreate, JobCreate, SeedsUntilDecided
from api.core.settings import Settings
from api.core.webhooks import comparison_event

log = logging.getLogger(__name__)

PRIMARY_METRIC = METRICS[0]
"""The metric the stopping rule watches (AP), the summary's headline."""
CONFIDENCE = 0.95
"""Of the whole comparison: with several arms, each arm's sequence is at ``1 - 0.05 / arms``."""


def arm_results(spec: ComparisonCreate, jobs: Sequence[Job]) -> list[ArmResult]:
    """Each arm's final metrics per seed, from the jobs that succeeded."""
    per_arm: dict[str, dict[int, dict[str, float]]] = {arm.name: {} for arm in spec.arms}
    for job in jobs:
        if job.state == JobState.succeeded and job.result and job.arm in per_arm:
            per_arm[job.arm][job.seed or 0] = job.result
    return [ArmResult(name=name, per_seed=seeds) for name, seeds in per_arm.items()]


def arm_confidence(spec: ComparisonCreate) -> float:
    """Each arm's sequence level: Bonferroni over the non-reference arms keeps the chance of
    any false decision at ``1 - CONFIDENCE``."""
    return 1 - (1 - CONFIDENCE) / (len(spec.arms) - 1)


def sequential_decisions(
    spec: ComparisonCreate, rounds: SeedsUntilDecided, jobs: Sequence[Job]
) -> dict[str, SequentialDecision]:
    """Per non-reference arm, the stopping rule over its AP differences paired so far."""
    summary = summarize(arm_results(spec, jobs), spec.reference_arm, metrics=(PRIMARY_METRIC,))
    differences = summary.per_metric[PRIMARY_METRIC].differences
    # max counts seeds tried (failed ones too) and is checked by the caller: the pairs, at
    # most the seeds tried, never reach max + 1.
    return {
        arm: sequential_decision(
            [diff.per_seed[seed] for seed in sorted(diff.per_seed)],  # seeds in round order
            min_pairs=rounds.min,
            max_pairs=rounds.max + 1,
            target_effect=spec.target_effect,
            confidence=arm_confidence(spec),
            shown_as=(100, " AP"),  # in points, as the table beside it
        )
        for arm, diff in differences.items()
    }


def next_status(spec: ComparisonCreate, jobs: Sequence[Job]) -> tuple[ComparisonStatus, str]:
    """What a comparison whose jobs have all ended does next, and why in words: ``running``
    means add a round."""
    cancelled = [job for job in jobs if job.cancel_requested]
    if cancelled:
        job = cancelled[0]
        return ComparisonStatus.cancelled, (
            f"job {job.id} ({job.arm}, seed {job.seed}) was cancelled on request: no further rounds"
        )
    if not isinstance(spec.seeds, SeedsUntilDecided):
        return ComparisonStatus.finished, f"every job of the {len(spec.seeds)} seeds ended"
    tried = len({job.seed for job in jobs})
    if not any(job.state == JobState.succeeded for job in jobs):
        return ComparisonStatus.failed, (
            f"no job of the {tried} seeds tried succeeded, so more seeds would not help: see "
            "the jobs' failure reasons"
        )
    decisions = sequential_decisions(spec, spec.seeds, jobs)
    said = "; ".join(
        f"{arm} vs {spec.reference_arm} ({d.n} pairs): {d.reason}" for arm, d in decisions.items()
    )
    if all(d.stop for d in decisions.values()):
        return ComparisonStatus.decided, f"decided after {tried} seeds: {said}"
    if tried >= spec.seeds.max:
        return ComparisonStatus.max_reached, f"{tried} of at most {spec.seeds.max} seeds: {said}"
    return ComparisonStatus.running, f"{tried} seeds: {said}"


def advance_comparison(
    session: Session, comparison_id: int, settings: Settings, send: Callable[[Job], None]
) -> ComparisonStatus | None:
    """Stop comparison ``comparison_id`` or add its next round, once every job has ended.

    Returns the status it moved to (``running``: a round was added), or None when nothing
    changed: a job still runs, the comparison stopped before or is gone, another process
    moved it first, or the round would pass the tenant's limit of active jobs (the reaper
    tries again). The new jobs are committed before ``send`` delivers their tasks; a task
    that cannot be sent is sent again by the reaper (``jobstore.resend_lost_tasks``).
    """
    found = session.execute(
        select(Comparison.status, Comparison.rounds, Comparison.spec, Comparison.tenant_id).where(
            Comparison.id == comparison_id
        )
    ).one_or_none()
    if found is None or found.status != ComparisonStatus.running:
        return None
    jobs = _jobs(session, comparison_id)
    if any(job.state not in TERMINAL_STATES for job in jobs):
        return None
    spec = ComparisonCreate.model_validate(found.spec)
    status, reason = next_status(spec, jobs)
    current = (
        (Comparison.id == comparison_id)
        & (Comparison.status == ComparisonStatus.running)
        & (Comparison.rounds == found.rounds)
    )
    if status != ComparisonStatus.running:
        values = {"status": status, "stop_reason": reason, "decided_at": utcnow()}
        if not _moved(session, current, values, commit=False):
            return None
        event = (
            "comparison.decided" if status == ComparisonStatus.decided else "comparison.finished"
        )
        comparison_event(
            session, comparison_id, event, {"status": status.value, "stop_reason": reason}
        )
        session.commit()
        return status
    seeds = _next_seeds(spec, jobs)
    if _active_jobs(session, found.tenant_id) + len(seeds) * len(spec.arms) > (
        settings.max_active_jobs
    ):
        session.rollback()
        log.info("comparison %s: next round waits for room under the job limit", comparison_id)
        return None
    if not _moved(session, current, {"rounds": found.rounds + 1}, commit=False):
        return None
    created = _add_round(session, comparison_id, spec, jobs, seeds, found.rounds + 1, reason)
    session.commit()
    _send_all(send, created)
    return status


def advance_after_job(
    session: Session, job_id: int, settings: Settings, send: Callable[[Job], None]
) -> ComparisonStatus | None:
    """:func:`advance_comparison` for the comparison of job ``job_id``, if it has one."""
    comparison_id = session.scalar(select(Job.comparison_id).where(Job.id == job_id))
    session.rollback()  # the read above opened a transaction: the step reads afresh
    if comparison_id is None:
        return None
    return advance_comparison(session, comparison_id, settings, send)


def advance_waiting_comparisons(
    session: Session, settings: Settings, send: Callable[[Job], None]
) -> dict[int, ComparisonStatus]:
    """:func:`advance_comparison` for every running comparison whose jobs have all ended
    (their last job ended outside a worker, or a round waited for room). Returns the ids
    moved, with their new status."""
    unfinished = (
        select(Job.id)
        .where(Job.comparison_id == Comparison.id, Job.state.not_in(TERMINAL_STATES))
        .correlate(Comparison)
    )
    waiting = session.scalars(
        select(Comparison.id)
        .where(Comparison.status == ComparisonStatus.running, ~exists(unfinished))
        .order_by(Comparison.id)
    ).all()
    session.rollback()
    moved = {}
    for comparison_id in waiting:
        try:
            status = advance_comparison(session, comparison_id, settings, send)
        except Exception:  # one comparison that cannot be stepped must not stall the others
            session.rollback()
            log.exception("comparison %s: next round not decided; next try later", comparison_id)
            continue
        if status is not None:
            moved[comparison_id] = status
    return moved


def _jobs(session: Session, comparison_id: int) -> list[Job]:
    # populate_existing: a long-lived session (the reaper's) may hold these rows from before.
    query = select(Job).where(Job.comparison_id == comparison_id).order_by(Job.id)
    return list(session.scalars(query.execution_options(populate_existing=True)))


def _moved(
    session: Session, where: ColumnElement[bool], values: dict[str, Any], commit: bool = True
) -> bool:
    """One conditional UPDATE of a comparison; False (rolled back) when another process moved
    it first."""
    statement = update(Comparison).where(where).values(**values)
    result = session.execute(statement.execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return False
    if commit:
        session.commit()
    return True


def _next_seeds(spec: ComparisonCreate, jobs: Sequence[Job]) -> list[int]:
    assert isinstance(spec.seeds, SeedsUntilDecided)
    return spec.seeds.next_round(len({job.seed for job in jobs}))


def _active_jobs(session: Session, tenant_id: int) -> int:
    """The tenant's jobs queued or running."""
    query = select(func.count()).select_from(Job)
    active = query.where(Job.tenant_id == tenant_id, Job.state.not_in(TERMINAL_STATES))
    return session.scalar(active) or 0


def _add_round(
    session: Session,
    comparison_id: int,
    spec: ComparisonCreate,
    jobs: Sequence[Job],
    seeds: list[int],
    round_number: int,
    reason: str,
) -> list[Job]:
    """Queued jobs for ``seeds`` in every arm, resolved as the arm's first job was (the seed
    changes no resolved setting), with their events."""
    first = {job.arm: job for job in reversed(jobs)}
    queued: list[tuple[dict[str, Any], Sequence[str]]] = []
    for arm, seed, raw in spec.job_specs(seeds):
        template, job_spec = first[arm], JobCreate.model_validate(raw)
        fields = {
            "tenant_id": template.tenant_id, "comparison_id": comparison_id, "arm": arm,
            "seed": seed, "spec": job_spec.model_dump(mode="json"), "queue": job_spec.queue,
            "sent_at": utcnow(), "resolved": template.resolved,
            "max_batches": template.max_batches,
        }  # fmt: skip
        message = f"comparison {comparison_id}, arm {arm}, round {round_number} ({reason})"
        queued.append((fields, [message]))
    return jobstore.add_queued_jobs(session, queued)


def _send_all(send: Callable[[Job], None], created: Sequence[Job]) -> None:
    for job in created:
        try:
            send(job)
        except Exception as error:  # the broker's client raises many kinds; the reaper resends
            log.warning("job %s: task not sent (%s); the reaper sends it again", job.id, error)
