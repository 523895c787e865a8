"""Runs one training job through ae_model, reporting to the database through the hooks of
``worker.hooks``.

Imported inside the Celery task, in the worker's child process: this module imports torch.
"""

import logging
import multiprocessing
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ae_model.cfg import CfgError
from ae_model.train import NonFiniteLossError, Trainer
from api.core import jobstore as jobs
from api.core.db.models import Checkpoint, Dataset, Job, JobState
from api.core.job_spec import CheckpointStart, JobCreate, ModelWeightsStart
from api.core.model_refs import ModelCfg, resolve_model
from api.core.settings import Settings
from worker.hooks import CheckpointExport, JobControl, JobLostError, MetricsWriter
from worker.job_config import train_config

log = logging.getLogger(__name__)


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
    with sessions() as session:
        if not jobs.claim_job(session, job_id, worker):
            log.warning("job %s is not queued; duplicate delivery ignored", job_id)
            return
    with heartbeat_thread(sessions, job_id, worker, settings.heartbeat_interval_s):
        _train_claimed(job_id, sessions, settings, worker)


@dataclass(frozen=True)
class JobInputs:
    """What a job names, found: its spec, its model's cfg, its dataset and its start weights
    (a path relative to the artifact root, with the cutoff)."""

    spec: JobCreate
    model: ModelCfg
    dataset: Dataset
    start: tuple[str, int | None] | None


def _job_inputs(sessions: sessionmaker[Session], job_id: int) -> JobInputs:
    """The job's inputs; ``LookupError`` saying which reference names nothing any more."""
    with sessions() as session:
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
) -> Trainer:
    """The Trainer of the claimed job, its resolved settings stored. Raises what stops it
    from being built: the user errors that say what to change (a missing model or dataset,
    a cfg or settings the Trainer refuses), and anything else (an unknown CUDA device)."""
    inputs = _job_inputs(sessions, job_id)
    spec, root = inputs.spec, settings.artifacts_dir
    if spec.train.workers:
        _allow_loader_processes()
    # Both under the artifact root; a dataset's row holds its path relative to that root.
    out = settings.artifacts_dir / "jobs" / str(job_id)
    out.mkdir(parents=True, exist_ok=True)
    resume = out / "last.pt"
    # JobControl first: once the job is lost, it stops the trainer before the others write.
    hooks = [
        JobControl(sessions, job_id, worker),
        MetricsWriter(sessions, job_id),
        CheckpointExport(sessions, job_id, settings.artifacts_dir),
    ]
    start = (root / inputs.start[0], inputs.start[1]) if inputs.start is not None else None
    resuming = resume.is_file()
    trainer = Trainer(
        train_config(spec, inputs.model, root / inputs.dataset.path, out, start),
        hooks=hooks,
        resume=resume if resuming else None,
    )
    resolved = trainer.config.resolved
    with sessions() as session:
        if trainer.start is not None and not resuming:  # a resume's weights are its own
            jobs.add_event(session, job_id, JobState.running, f"note: {trainer.start.describe()}")
        jobs.save_resolved(session, job_id, resolved, trainer.resolved.max_batches)
    return trainer


def _train_claimed(
    job_id: int, sessions: sessionmaker[Session], settings: Settings, worker: str
) -> None:
    """Train the claimed job to an outcome. Every exception fails the job at once with its
    cause (an error that happened once happens again on the next attempt, so none is
    retried) and returns, so Celery acknowledges the task; only a worker that dies without
    a word leaves the job to the reaper, which retries it."""

    def fail(reason: str) -> None:
        with sessions() as session:
            jobs.finish_job(session, job_id, JobState.failed, failure_reason=reason, worker=worker)

    try:
        trainer = _prepare(job_id, sessions, settings, worker)
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
    max_batches = trainer.resolved.max_batches
    with sessions() as session:
        # A cancel that arrives during the final evaluation comes too late to stop anything.
        if trainer.stop_requested and trainer.iteration < max_batches:
            jobs.finish_job(
                session, job_id, JobState.cancelled,
                f"cancelled at iteration {trainer.iteration}; last checkpoint kept", worker=worker,
            )  # fmt: skip
        else:
            jobs.finish_job(
                session, job_id, JobState.succeeded,
                f"finished {trainer.iteration} iterations", result=final, worker=worker,
            )  # fmt: skip
