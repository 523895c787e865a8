"""Training hooks that report a job to the database, one concern each.

The worker passes them to the Trainer in this order: :class:`JobControl`, :class:`MetricsWriter`,
:class:`CheckpointExport`. JobControl goes first because it decides whether the others may
write: once the job is no longer this worker's, it raises :class:`JobLostError` at every call,
so the Trainer calls none of the hooks after it again (``after_train`` included).

Imported in the worker's child process: this module imports torch (through ae_model).
"""

import hashlib
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ae_model.export import TrainedNetwork, export_onnx, load_trained_network, same_network
from ae_model.train import Hook, NonFiniteLossError, Trainer
from ae_model.weights import save_darknet_weights
from api.core import jobstore as jobs
from api.core.artifacts import ArtifactStore, LocalStore
from api.core.db.models import JobState

log = logging.getLogger(__name__)

# The job reports to the database every few seconds, not per step: one transaction for the
# metric rows of many steps, and one heartbeat reply.
FLUSH_SECONDS = 2.0
FLUSH_ROWS = 2000
# How long a checkpoint or the job's end waits for an unreachable database before the job
# fails; meanwhile training goes on and metric rows stay buffered in memory.
DATABASE_WAIT_S = 600.0
# The checkpoints a job's end exports to ONNX.
ONNX_CHECKPOINTS = ("last", "best")


class JobLostError(RuntimeError):
    """The job is no longer this worker's (re-queued as dead, it may run elsewhere): stop
    without a trace."""


class DatabaseLink:
    """One hook's writes to the database, through outages: an unreachable database is logged
    once (``while_down`` says what the hook does meanwhile) and the write is tried again at
    the hook's next call, or, with ``wait``, every second until the database is back (up to
    ``DATABASE_WAIT_S``, then the database's error propagates)."""

    def __init__(
        self, sessions: sessionmaker[Session], job_id: int, while_down: str, when_back: str
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.while_down = while_down
        self.when_back = when_back
        self.down = False

    def write(self, action: Callable[[Session], None], wait: bool = False) -> bool:
        """Run ``action`` in a session; whether it ran (False: the database is unreachable)."""
        deadline = time.monotonic() + DATABASE_WAIT_S
        while True:
            try:
                with self.sessions() as session:
                    action(session)
                break
            except (OperationalError, InterfaceError) as error:
                if not self.down:
                    log.warning("job %s: database unreachable, %s: %s",
                                self.job_id, self.while_down, error.orig)  # fmt: skip
                self.down = True
                if not wait:
                    return False
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        if self.down:
            log.warning("job %s: database back; %s", self.job_id, self.when_back)
            self.down = False
        return True


class JobControl(Hook):
    """Reports the job's progress with each heartbeat and acts on the reply: a cancel request
    stops the trainer at its next step (which keeps a checkpoint); a job that is no longer this
    worker's (the reaper took it for dead, another worker may run it now) raises
    :class:`JobLostError`, so nothing more is written, not even a checkpoint.

    Asks every ``FLUSH_SECONDS`` of steps and at every evaluation; before a checkpoint, after
    a rollback and at the end it waits for an unreachable database, so no checkpoint is written
    unasked."""

    def __init__(self, sessions: sessionmaker[Session], job_id: int, worker: str) -> None:
        self.job_id = job_id
        self.worker = worker
        self.link = DatabaseLink(
            sessions, job_id, "training on without heartbeat replies", "replies read again"
        )
        self.lost = False
        self.last_ask = time.monotonic()

    def ask(self, trainer: Trainer, wait: bool = False) -> None:
        """Stamp the heartbeat and act on its reply (``wait``: through an outage). A job
        found lost is not asked about again."""
        if not self.lost:
            self.last_ask = time.monotonic()
            self.link.write(lambda session: self._heartbeat(session, trainer), wait)
        if self.lost:
            raise JobLostError(f"job {self.job_id} is no longer {self.worker}'s")

    def _heartbeat(self, session: Session, trainer: Trainer) -> None:
        reply = jobs.heartbeat(session, self.job_id, trainer.iteration, self.worker)
        self.lost = reply == "lost"
        if reply == "cancel":
            trainer.stop_requested = True

    def before_train(self, trainer: Trainer) -> None:
        self.ask(trainer)

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if time.monotonic() - self.last_ask >= FLUSH_SECONDS:
            self.ask(trainer)

    def after_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.ask(trainer)

    def after_rollback(self, trainer: Trainer, error: NonFiniteLossError) -> None:
        self.ask(trainer, wait=True)

    def before_checkpoint(self, trainer: Trainer, path: Path) -> None:
        self.ask(trainer, wait=True)

    def after_train(self, trainer: Trainer) -> None:
        self.ask(trainer, wait=True)


class MetricsWriter(Hook):
    """Writes the job's metric rows in batches: every ``FLUSH_SECONDS`` or ``FLUSH_ROWS``
    rows, at every evaluation, and, waiting for an unreachable database, before a checkpoint
    and at the end, so the rows of the steps up to a checkpoint are stored before it exists (a
    resume from it starts after its iteration). Meanwhile rows stay buffered in memory.

    After a rollback to a checkpoint, the stored rows of the steps after it (trained again
    next) are deleted, and the rollback logged, in the transaction that writes the rows up to
    it."""

    def __init__(self, sessions: sessionmaker[Session], job_id: int) -> None:
        self.job_id = job_id
        self.link = DatabaseLink(sessions, job_id, "buffering metrics", "buffered metrics written")
        self.buffer: list[jobs.MetricRow] = []
        self.last_flush = time.monotonic()
        # After a rollback: (the checkpoint's iteration, what happened) until written.
        self.rolled_back: tuple[int, str] | None = None

    def flush(self, wait: bool = False) -> None:
        self.last_flush = time.monotonic()
        if self.link.write(self._write, wait):
            self.buffer = []
            self.rolled_back = None

    def _write(self, session: Session) -> None:
        if self.rolled_back is not None:
            step, message = self.rolled_back
            jobs.delete_metrics_after(session, self.job_id, step)
            jobs.add_event(session, self.job_id, JobState.running, message)
        jobs.insert_metrics(session, self.job_id, self.buffer)
        session.commit()  # insert_metrics commits only when there are rows

    def before_train(self, trainer: Trainer) -> None:
        # In step with JobControl, which asks at the same moments, just before this writes.
        self.last_flush = time.monotonic()

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.buffer.extend(jobs.metric_rows(trainer.iteration, metrics, epoch=trainer.epoch))
        due = time.monotonic() - self.last_flush >= FLUSH_SECONDS
        if due or len(self.buffer) >= FLUSH_ROWS:
            self.flush()

    def after_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.buffer.extend(
            jobs.metric_rows(trainer.iteration, metrics, prefix="val/", epoch=trainer.epoch)
        )
        self.flush()

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
        self.flush(wait=True)

    def before_checkpoint(self, trainer: Trainer, path: Path) -> None:
        self.flush(wait=True)

    def after_train(self, trainer: Trainer) -> None:
        self.flush(wait=True)


class CheckpointExport(Hook):
    """After each checkpoint file: its darknet ``.weights`` beside it (the API cannot convert:
    it never imports torch), both put in ``store`` (an S3 store uploads them; the local one
    holds them already), and a row for each of the two files with its size, SHA-256 and
    path relative to ``artifacts`` (the artifact root), which is its key in the store.
    The rows come after the upload: a row always names a file another machine can read.
    At the end of the run, ``last.onnx`` and ``best.onnx`` the same way (``after_train``)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: int,
        artifacts: Path,
        store: ArtifactStore | None = None,
    ) -> None:
        self.job_id = job_id
        self.artifacts = artifacts
        self.store = store if store is not None else LocalStore(artifacts)
        # A checkpoint's rows wait for an unreachable database, like the writes before it.
        self.link = DatabaseLink(
            sessions, job_id, "checkpoint rows wait for it", "checkpoint rows written"
        )

    def after_checkpoint(self, trainer: Trainer, path: Path) -> None:
        weights = path.with_suffix(".weights")
        # Written beside, then renamed over: a reader never sees half a file.
        partial = weights.with_suffix(".weights.tmp")
        # The moving average, if any; seen as darknet counts it: the images this run trained on.
        images = trainer.iteration * trainer.resolved.batch
        save_darknet_weights(trainer.eval_model, partial, seen=images)
        partial.replace(weights)
        for file in (path, weights):
            self.store.put_file(file.relative_to(self.artifacts).as_posix(), file)
        metrics = _metrics_at(trainer, trainer.iteration)

        def record(session: Session) -> None:  # rows are upserted: a retry rewrites them
            for file in (path, weights):
                self._record(session, file, trainer.iteration, metrics)

        self.link.write(record, wait=True)

    def _record(
        self, session: Session, file: Path, iteration: int, metrics: dict[str, float]
    ) -> None:
        jobs.record_checkpoint(
            session, self.job_id, file.name, iteration=iteration, metrics=metrics,
            size=file.stat().st_size, sha256=_sha256(file),
            path=file.relative_to(self.artifacts).as_posix(),
        )  # fmt: skip

    def after_train(self, trainer: Trainer) -> None:
        """At the end of a run that ended without an error (finished or cancelled): the ONNX
        file of ``last`` and ``best``, recorded like the others. Only then: an export takes
        seconds (docs/api.md, "Checkpoints"), too long for every checkpoint. A failed export
        is logged in the job's log; the job still succeeds with its .pt and .weights."""
        # after_train runs in the Trainer's `finally`: an exception in flight is a failed run.
        if trainer.rank or sys.exc_info()[0] is not None:
            return
        exported: list[tuple[TrainedNetwork, Path]] = []
        for name in ONNX_CHECKPOINTS:
            checkpoint = trainer.out / f"{name}.pt"
            if checkpoint.is_file():
                self._export_onnx(trainer, checkpoint, exported)

    def _export_onnx(
        self, trainer: Trainer, checkpoint: Path, exported: list[tuple[TrainedNetwork, Path]]
    ) -> None:
        """Write and record the checkpoint's .onnx; a network in ``exported`` already (best
        and last after a final evaluation that was the best) is copied, not exported again."""
        onnx = checkpoint.with_suffix(".onnx")
        try:
            network = load_trained_network(checkpoint)
            same = [file for other, file in exported if same_network(other, network)]
            if same:
                partial = onnx.with_name(onnx.name + ".tmp")
                shutil.copyfile(same[0], partial)
                partial.replace(onnx)
            else:
                export_onnx(network.model, onnx, network.width, network.height,
                            classes=network.classes)  # fmt: skip
        except Exception as error:  # any exporter failure; the checkpoint itself is fine
            log.warning("job %s: %s not exported", self.job_id, onnx.name, exc_info=True)
            message = f"{checkpoint.stem}: no ONNX file, the export failed: {error}"

            def note(session: Session) -> None:
                jobs.add_event(session, self.job_id, JobState.running, message)
                session.commit()

            self.link.write(note, wait=True)
            return
        exported.append((network, onnx))
        self.store.put_file(onnx.relative_to(self.artifacts).as_posix(), onnx)
        metrics = _metrics_at(trainer, network.iteration)
        self.link.write(
            lambda session: self._record(session, onnx, network.iteration, metrics), wait=True
        )


def _metrics_at(trainer: Trainer, iteration: int) -> dict[str, float]:
    """The COCO metrics of the trainer's last evaluation at or before ``iteration``."""
    evals = [m for m in trainer.evaluations if m["iteration"] <= iteration]
    return {k: v for k, v in evals[-1].items() if "/" not in k} if evals else {}


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
