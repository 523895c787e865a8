"""Runs one training job through ae_model, reporting to the database through the hooks of
``worker.hooks``.

Imported inside the Celery task, in the worker's child process: this module imports torch.
"""

import logging
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ae_model.cfg import CfgError
from ae_model.compare.image_bootstrap import DETECTIONS_LAST, bootstrap_record, read_matches
from ae_model.train import NonFiniteLossError, Trainer
from api.core import comparison_rounds
from api.core import jobstore as jobs
from api.core.artifacts import ArtifactStore, open_store
from api.core.broker import send_train_task
from api.core.db.models import Checkpoint, Dataset, Job, JobState
from api.core.job_spec import CheckpointStart, JobCreate, ModelWeightsStart
from api.core.model_refs import ModelCfg, resolve_model
from api.core.settings import Settings
from worker import celery_app
from worker.hooks import (
    CheckpointExport,
    DatabaseLink,
    JobControl,
    JobLostError,
    MetricsWriter,
)
from worker.job_config import train_config

log = logging.getLogger(__name__)
T = TypeVar("T")
# The per-image matches of a job's best checkpoint on test, for its image bootstrap.
DETECTIONS_BEST_TEST = "detections-best-test.json.gz"


@contextmanager
def heartbeat_thread(
    sessions: sessionmaker[Session], job_id: int, worker: str, interval_s: float
) -> Iterator[None]:
    """Stamp the job's heartbeat every ``interval_s`` from a daemon thread while the block runs:
    the reaper takes a job without heartbeats for its worker's death, so they must continue
    through evaluations and checkpoint writes. A database outage skips beats, not the job."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                with sessions() as session:
                    jobs.touch_heartbeat(session, job_id, worker)
            except Exception as error:  # the next beat retries; training goes on meanwhile
                log.warning("job %s: heartbeat not recorded: %s", job_id, error)

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _allow_loader_processes() -> None:
    """Let this job's DataLoader start worker processes.

    Celery's prefork children are daemonic, and multiprocessing refuses children to daemons.
    Each job runs in a child of its own (one task per child), and torch's loader workers watch
    their parent and exit with it, so a killed job leaves no orphans behind.
    """
    multiprocessing.current_process().daemon = False


def run_job(job_id: int, sessions: sessionmaker[Session], settings: Settings, worker: str) -> None:
    """Claim job ``job_id`` and train it to an outcome recorded in the database.

    A duplicate delivery (the job is not queued) returns at once without training.
    """
    if settings.worker_threads:  # the worker's share of the cores (AETRAIN_WORKER_THREADS)
        torch.set_num_threads(settings.worker_threads)
    if not _through_outage(sessions, job_id, lambda s: jobs.claim_job(s, job_id, worker)):
        log.warning("job %s is not queued; duplicate delivery ignored", job_id)
        return
    with heartbeat_thread(sessions, job_id, worker, settings.heartbeat_interval_s):
        _train_claimed(job_id, sessions, settings, worker)
    _advance_comparison(job_id, sessions, settings)


def _advance_comparison(job_id: int, sessions: sessionmaker[Session], settings: Settings) -> None:
    """If the job was its comparison's last to end, stop the comparison or add its next round
    of seeds. An error here does not touch the job's outcome: the API's reaper tries again."""

    def send(job: Job) -> None:  # by the worker's app (built in the parent, before the fork)
        send_train_task(celery_app.app, job.id, job.queue)

    try:
        with sessions() as session:
            comparison_rounds.advance_after_job(session, job_id, settings, send)
    except Exception:
        log.exception("job %s: its comparison's next step is left to the reaper", job_id)


@dataclass(frozen=True)
class JobInputs:
    """What a job names, found: its spec, its model's cfg, its dataset and its start weights
    (a path relative to the artifact root, with the cutoff)."""

    spec: JobCreate
    model: ModelCfg
    dataset: Dataset
    start: tuple[str, int | None] | None


def _job_inputs(session: Session, job_id: int) -> JobInputs:
    """The job's inputs; ``LookupError`` saying which reference names nothing any more."""
    job = session.get_one(Job, job_id)
    spec = JobCreate.model_validate(job.spec)
    dataset = session.scalar(
        select(Dataset).where(Dataset.id == spec.dataset_id, Dataset.tenant_id == job.tenant_id)
    )
    if dataset is None:
        raise LookupError(f"no dataset {spec.dataset_id}; see GET /v1/datasets")
    model = resolve_model(session, job.tenant_id, spec.model)
    return JobInputs(spec, model, dataset, _start(session, job.tenant_id, spec, model))


def _start(
    session: Session, tenant_id: int, spec: JobCreate, model: ModelCfg
) -> tuple[str, int | None] | None:
    """The start weights ``spec.init`` names, relative to the artifact root, and their cutoff;
    ``LookupError`` when they are gone."""
    start = spec.init
    if isinstance(start, ModelWeightsStart):
        weights = model.upload.weights if model.upload is not None else None
        if weights is None:
            raise LookupError(f"the weights of model {model.ref}")
        return weights["path"], weights["cutoff"]
    if isinstance(start, CheckpointStart):
        path = session.scalar(
            select(Checkpoint.path)
            .join(Job, Job.id == Checkpoint.job_id)
            .where(
                Job.id == start.job_id,
                Job.tenant_id == tenant_id,
                Checkpoint.name == f"{start.checkpoint}.pt",
            )
        )
        if path is None:
            raise LookupError(f"the {start.checkpoint} checkpoint of job {start.job_id}")
        return path, None
    return None


def failure_reason(error: BaseException) -> str:
    """The exception's type and message, as the job's failure reason and log show it."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _prepare(
    job_id: int, sessions: sessionmaker[Session], settings: Settings, worker: str
) -> tuple[Trainer, JobCreate]:
    """The Trainer of the claimed job, its resolved settings stored, and the job's spec.
    Raises what stops it from being built: the user errors that say what to change (a missing
    model or dataset, a cfg or settings the Trainer refuses), and anything else (an unknown
    CUDA device)."""
    inputs = _through_outage(sessions, job_id, lambda session: _job_inputs(session, job_id))
    spec, store = inputs.spec, open_store(settings)
    if spec.train.workers:
        _allow_loader_processes()
    # Written here, under this machine's artifact root, and put in the store after each
    # checkpoint (for the local store, the same folder).
    out = settings.artifacts_dir / "jobs" / str(job_id)
    out.mkdir(parents=True, exist_ok=True)
    resume = out / "last.pt"
    # JobControl first: once the job is lost, it stops the trainer before the others write.
    hooks = [
        JobControl(sessions, job_id, worker),
        MetricsWriter(sessions, job_id),
        CheckpointExport(sessions, job_id, settings.artifacts_dir, store),
    ]
    # Rows hold keys in the store; a remote store's files are read from this machine's cache.
    start = (store.fetch(inputs.start[0]), inputs.start[1]) if inputs.start is not None else None
    resuming = _fetch_last_checkpoint(store, f"jobs/{job_id}/last.pt", resume)
    trainer = Trainer(
        train_config(spec, inputs.model, store.fetch(inputs.dataset.path), out, start),
        hooks=hooks,
        resume=resume if resuming else None,
    )
    resolved = trainer.config.resolved

    def record(session: Session) -> None:
        if trainer.start is not None and not resuming:  # a resume's weights are its own
            jobs.add_event(session, job_id, JobState.running, f"note: {trainer.start.describe()}")
        if resuming:
            jobs.add_event(session, job_id, JobState.running,
                           f"resumed from iteration {trainer.iteration} (last.pt)")  # fmt: skip
        jobs.save_resolved(session, job_id, resolved, trainer.resolved.max_batches)

    _through_outage(sessions, job_id, record)
    return trainer, spec


def _through_outage(
    sessions: sessionmaker[Session], job_id: int, action: Callable[[Session], T]
) -> T:
    """What ``action`` returns, run in a session that waits for an unreachable database as
    the hooks do (``worker.hooks.DATABASE_WAIT_S``): a database restarting while a job starts
    or ends delays its record, it does not fail the job."""
    link = DatabaseLink(sessions, job_id, "the job's record waits for it", "job recorded")
    returned: list[T] = []
    link.write(lambda session: returned.append(action(session)), wait=True)
    return returned[-1]


def _fetch_last_checkpoint(store: ArtifactStore, key: str, resume: Path) -> bool:
    """Whether the job resumes from ``resume``, its ``last.pt``. From a remote store, the
    store's copy is fetched over any on this machine: an earlier attempt here may have left
    an older one, before the job moved on elsewhere; without one in the store the job starts
    over, so a file the store never got is dropped."""
    if store.remote:
        if store.exists(key):
            store.get_file(key, resume)
        else:
            resume.unlink(missing_ok=True)
    return resume.is_file()


def _train_claimed(
    job_id: int, sessions: sessionmaker[Session], settings: Settings, worker: str
) -> None:
    """Train the claimed job to an outcome. Every exception fails the job at once with its
    cause (an error that happened once happens again on the next attempt, so none is
    retried) and returns, so Celery acknowledges the task; only a worker that dies without
    a word leaves the job to the reaper, which retries it."""

    def finish(state: JobState, message: str = "", **outcome: Any) -> None:
        _through_outage(
            sessions,
            job_id,
            lambda session: jobs.finish_job(
                session, job_id, state, message, worker=worker, **outcome
            ),
        )

    def fail(reason: str) -> None:
        finish(JobState.failed, failure_reason=reason)

    try:
        trainer, spec = _prepare(job_id, sessions, settings, worker)
    except LookupError as error:  # ModelNotFoundError among them
        fail(f"the job's model, dataset or start weights no longer exist: {error}")
        return
    except (CfgError, ValueError, FileNotFoundError) as error:
        fail(str(error))
        return
    except Exception as error:
        log.exception("job %s could not start", job_id)
        fail(f"could not start training: {failure_reason(error)}")
        return
    try:
        final = trainer.train()
    except JobLostError as error:
        log.warning("%s; stopped at iteration %s", error, trainer.iteration)
        return
    except NonFiniteLossError as error:
        fail(str(error))
        return
    except Exception as error:
        log.exception("job %s crashed", job_id)
        fail(f"training crashed at iteration {trainer.iteration}: {failure_reason(error)}")
        return
    # A cancel that arrives during the final evaluation comes too late to stop anything.
    if trainer.stop_requested and trainer.iteration < trainer.resolved.max_batches:
        finish(
            JobState.cancelled, f"cancelled at iteration {trainer.iteration}; last checkpoint kept"
        )
        return
    try:
        result, detections = declared_evaluation(trainer, spec, final, open_store(settings), job_id)
    except Exception as error:
        log.exception("job %s: its declared evaluation failed", job_id)
        fail(
            f"trained, but evaluating the {spec.evaluate.checkpoint} checkpoint failed: "
            f"{failure_reason(error)}"
        )
        return
    record = _seed_and_image_record(trainer, job_id, settings, detections)
    finish(
        JobState.succeeded,
        f"finished {trainer.iteration} iterations",
        result={**result, **record},
    )


def declared_evaluation(
    trainer: Trainer, spec: JobCreate, final: dict[str, float], store: ArtifactStore, job_id: int
) -> tuple[dict[str, Any], str]:
    """The result metrics of the evaluation the job declared (``spec.evaluate``), with
    ``evaluated`` saying which it is, and the name of its per-image detections file in the
    job's folder. ``last``: ``final``, the last checkpoint on val. ``best``: the best
    checkpoint (by val AP; from the store, which has it even when this attempt resumed
    after it) on the test split, with the last checkpoint's val metrics under ``last_val``."""
    if spec.evaluate.checkpoint == "last":
        iteration = int(final.get("iteration", trainer.iteration))
        evaluated = {"checkpoint": "last", "split": "val", "iteration": iteration}
        return {**final, "evaluated": evaluated}, DETECTIONS_LAST
    best = store.fetch(f"jobs/{job_id}/best.pt")
    test = trainer.evaluate_checkpoint(best, "test", trainer.out / DETECTIONS_BEST_TEST)
    evaluated = {
        "checkpoint": "best", "split": "test", "iteration": int(test["iteration"]),
        "val_AP": trainer.best_metric,
    }  # fmt: skip
    return {**test, "evaluated": evaluated, "last_val": final}, DETECTIONS_BEST_TEST


def _seed_and_image_record(
    trainer: Trainer, job_id: int, settings: Settings, detections: str
) -> dict[str, Any]:
    """What a succeeded job keeps beside its final metrics (``docs/comparisons.md``): the
    ``fingerprints`` of what its seed fixed and the ``image_bootstrap`` of its declared
    evaluation, whose per-image detections file ``detections`` goes to the artifact store."""
    record: dict[str, Any] = {"fingerprints": trainer.fingerprints}
    path = trainer.out / detections
    if not path.is_file():  # a run whose final evaluation saw no image
        return record
    key = f"jobs/{job_id}/{detections}"
    try:
        open_store(settings).put_file(key, path)
        # The file's name in the job's folder: equal records for equal runs.
        record["image_bootstrap"] = {
            **bootstrap_record(read_matches(path)),
            "detections": detections,
        }
    except Exception as error:  # the job succeeded: its metrics stand without the bootstrap
        log.warning("job %s: no image bootstrap recorded: %s", job_id, error)
    return record
