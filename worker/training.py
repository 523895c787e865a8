"""Runs one training job through ae_model, reporting to the database through a hook.

Imported inside the Celery task, in the worker's child process: this module imports torch.
"""

import hashlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ae_model.cfg import CfgError
from ae_model.train import AEConfig, Hook, NonFiniteLossError, TrainConfig, Trainer
from ae_model.weights import save_darknet_weights
from api.core import jobstore as jobs
from api.core.db.models import Dataset, Job, JobState, ModelConfig
from api.core.job_spec import JobCreate, StrideSpec
from api.core.settings import Settings

log = logging.getLogger(__name__)

# Metric rows go to the database in batches: one transaction every few seconds, not per step.
FLUSH_SECONDS = 2.0
FLUSH_ROWS = 2000
# How long a checkpoint or the job's end waits for an unreachable database before the job
# fails; meanwhile training goes on and metric rows stay buffered in memory.
DATABASE_WAIT_S = 600.0


class JobLostError(RuntimeError):
    """The job was re-queued as this worker's and may run elsewhere: stop without a trace."""


class DatabaseHook(Hook):
    """Streams metrics, heartbeats and checkpoints of a job into the database, and stops the
    trainer at the next flush when the job is cancelled or is no longer this worker's."""

    def __init__(self, sessions: sessionmaker[Session], job_id: int, worker: str) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.worker = worker
        self.lost = False
        self.outage = False
        self.buffer: list[Any] = []
        self.last_flush = time.monotonic()
        # After a rollback to a checkpoint: (its iteration, what happened) until the database
        # has forgotten the steps after it and recorded the event.
        self.rolled_back: tuple[int, str] | None = None

    def flush(self, trainer: Trainer, wait: bool = False) -> None:
        """Write the buffered metrics and the heartbeat. While the database is unreachable the
        rows stay buffered and training goes on; with ``wait`` (before a checkpoint, at the
        end) it retries until the database is back, so nothing is lost."""
        deadline = time.monotonic() + DATABASE_WAIT_S
        while True:
            try:
                self._flush(trainer)
                break
            except (OperationalError, InterfaceError) as error:
                if not self.outage:
                    log.warning("job %s: database unreachable, buffering metrics: %s",
                                self.job_id, error.orig)  # fmt: skip
                self.outage = True
                if not wait or time.monotonic() > deadline:
                    if wait:
                        raise
                    self.last_flush = time.monotonic()
                    return
                time.sleep(1.0)
        if self.outage:
            log.warning("job %s: database back; buffered metrics written", self.job_id)
            self.outage = False

    def _flush(self, trainer: Trainer) -> None:
        if self.lost:
            return
        with self.sessions() as session:
            reply = jobs.heartbeat(session, self.job_id, trainer.iteration, self.worker)
            if reply == "lost":
                # Re-queued as dead (heartbeats too late): another worker owns it now, so this
                # one stops at once and writes nothing more, not even a checkpoint.
                self.lost = True
                raise JobLostError(f"job {self.job_id} is no longer {self.worker}'s")
            if self.rolled_back is not None:
                step, message = self.rolled_back
                jobs.delete_metrics_after(session, self.job_id, step)
                jobs.add_event(session, self.job_id, JobState.running, message)
            jobs.insert_metrics(session, self.job_id, self.buffer)
            session.commit()  # insert_metrics commits only when there are rows
            self.rolled_back = None
            if reply == "cancel":
                trainer.stop_requested = True
        self.buffer = []
        self.last_flush = time.monotonic()

    def before_train(self, trainer: Trainer) -> None:
        self.flush(trainer)

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.buffer.extend(jobs.metric_rows(trainer.iteration, metrics, epoch=trainer.epoch))
        due = time.monotonic() - self.last_flush >= FLUSH_SECONDS
        if due or len(self.buffer) >= FLUSH_ROWS:
            self.flush(trainer)

    def after_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.buffer.extend(
            jobs.metric_rows(trainer.iteration, metrics, prefix="val/", epoch=trainer.epoch)
        )
        self.flush(trainer)

    def after_rollback(self, trainer: Trainer, error: NonFiniteLossError) -> None:
        # The steps after the checkpoint are trained again: their buffered rows go now, and
        # their stored rows before the replay writes any (this flush waits for the database).
        step = trainer.iteration
        self.buffer = [row for row in self.buffer if row[1] <= step]
        self.rolled_back = (
            step,
            f"{error}; rolled back to iteration {step} with the learning rate times "
            f"{trainer.config.nan_lr_factor:g} (rollback {trainer.rollbacks} of "
            f"{trainer.config.nan_rollbacks})",
        )
        self.flush(trainer, wait=True)

    def before_checkpoint(self, trainer: Trainer, path: Path) -> None:
        # A resume from this checkpoint starts after its iteration: the metrics of the steps
        # up to it must be stored before it exists, or a crash leaves a gap in the history.
        self.flush(trainer, wait=True)

    def after_checkpoint(self, trainer: Trainer, path: Path) -> None:
        if self.lost:
            return
        # The API cannot convert (it never imports torch), so darknet weights are written here.
        weights = path.with_suffix(".weights")
        save_darknet_weights(trainer.model, weights)
        evals = [m for m in trainer.evaluations if m["iteration"] <= trainer.iteration]
        metrics = {k: v for k, v in evals[-1].items() if "/" not in k} if evals else {}
        with self.sessions() as session:
            for file in (path, weights):
                jobs.record_checkpoint(
                    session, self.job_id, file.name, iteration=trainer.iteration,
                    metrics=metrics, size=file.stat().st_size, sha256=_sha256(file),
                    path=str(file),
                )  # fmt: skip

    def after_train(self, trainer: Trainer) -> None:
        self.flush(trainer, wait=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_config(spec: JobCreate, cfg: str, data: str, out: Path) -> TrainConfig:
    """The ae_model configuration of a job spec."""
    ae = None
    if spec.ae is not None:
        layers: Any = spec.ae.layers
        if isinstance(layers, StrideSpec):
            layers = layers.model_dump()
        ae = AEConfig(
            layers=layers, schedule=spec.ae.schedule, iterations=spec.ae.iterations,
            alpha_max=spec.ae.alpha_max, mode=spec.ae.mode, detach=spec.ae.detach,
        )  # fmt: skip
    return TrainConfig(
        cfg=cfg, data=data, out=str(out), seed=spec.seed, ae=ae, device=spec.device,
        **spec.train.model_dump(),
    )  # fmt: skip


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
    with sessions() as session:
        if not jobs.claim_job(session, job_id, worker):
            log.warning("job %s is not queued; duplicate delivery ignored", job_id)
            return
    with heartbeat_thread(sessions, job_id, worker, settings.heartbeat_interval_s):
        _train_claimed(job_id, sessions, settings, worker)


def _train_claimed(
    job_id: int, sessions: sessionmaker[Session], settings: Settings, worker: str
) -> None:
    with sessions() as session:
        job = session.get_one(Job, job_id)
        spec = JobCreate.model_validate(job.spec)
        dataset = session.scalar(select(Dataset).where(Dataset.id == spec.dataset_id))
        if isinstance(spec.model, int):
            model = session.get(ModelConfig, spec.model)
            cfg = model.cfg_text if model else ""
        else:
            cfg = spec.model
    out = settings.artifacts_dir / "jobs" / str(job_id)
    out.mkdir(parents=True, exist_ok=True)
    if dataset is None or not cfg:
        with sessions() as session:
            jobs.finish_job(
                session, job_id, JobState.failed,
                failure_reason="the job's dataset or model no longer exists; submit it again",
                worker=worker,
            )  # fmt: skip
        return
    if spec.train.workers:
        _allow_loader_processes()
    resume = out / "last.pt"
    hook = DatabaseHook(sessions, job_id, worker)
    try:
        trainer = Trainer(
            train_config(spec, cfg, dataset.path, out),
            hooks=[hook],
            resume=resume if resume.is_file() else None,
        )
    except (CfgError, ValueError, FileNotFoundError) as error:
        with sessions() as session:
            jobs.finish_job(
                session, job_id, JobState.failed, failure_reason=str(error), worker=worker
            )
        return
    resolved = trainer.config.resolved
    with sessions() as session:
        jobs.save_resolved(session, job_id, resolved, resolved["max_batches"])
    try:
        final = trainer.train()
    except JobLostError as error:
        log.warning("%s; stopped at iteration %s", error, trainer.iteration)
        return
    except NonFiniteLossError as error:
        with sessions() as session:
            jobs.finish_job(
                session, job_id, JobState.failed, failure_reason=str(error), worker=worker
            )
        return
    except Exception as error:
        log.exception("job %s crashed", job_id)
        with sessions() as session:
            jobs.finish_job(
                session, job_id, JobState.failed,
                failure_reason=f"training crashed at iteration {trainer.iteration}: "
                f"{type(error).__name__}: {error}", worker=worker,
            )  # fmt: skip
        raise
    with sessions() as session:
        # A cancel that arrives during the final evaluation comes too late to stop anything.
        if trainer.stop_requested and trainer.iteration < resolved["max_batches"]:
            jobs.finish_job(
                session, job_id, JobState.cancelled,
                f"cancelled at iteration {trainer.iteration}; last checkpoint kept", worker=worker,
            )  # fmt: skip
        else:
            jobs.finish_job(
                session, job_id, JobState.succeeded,
                f"finished {trainer.iteration} iterations", result=final, worker=worker,
            )  # fmt: skip
