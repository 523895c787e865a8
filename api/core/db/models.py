"""Tables. Every resource row belongs to a tenant; API keys are stored only as hashes."""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints so Alembic migrations are reproducible on PostgreSQL and SQLite alike.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# Row ids are 32-bit integers (PostgreSQL `integer`); a larger id names no row.
MAX_ROW_ID = 2**31 - 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    api_keys: Mapped[list["ApiKey"]] = relationship(back_populates="tenant")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # The first characters of the key, shown to users so they can tell their keys apart.
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    tenant: Mapped[Tenant] = relationship(back_populates="api_keys")


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATES = (JobState.succeeded, JobState.failed, JobState.cancelled)


class Dataset(Base):
    """A dataset in COCO layout on the artifact store (uploaded and validated, or generated)."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="ready")
    # Relative to the artifact root (datasets/3/pets): each process joins its own root.
    path: Mapped[str] = mapped_column(Text)
    class_names: Mapped[list[str]] = mapped_column(JSON, default=list)
    num_train: Mapped[int] = mapped_column(Integer, default=0)
    num_val: Mapped[int] = mapped_column(Integer, default=0)
    # Images in the optional test split (0: none), recorded at upload: with an S3 store the API
    # cannot look at the files when a job asks to evaluate its best checkpoint on it. Only a
    # server default: an INSERT that does not name it also fits the schema before 0013.
    num_test: Mapped[int] = mapped_column(Integer, server_default="0")
    # Bytes on the artifact store, recorded when stored (usage and quota); null for datasets
    # stored before migration 0014, which are counted on the store.
    size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelConfig(Base):
    """A darknet cfg uploaded by a tenant (bundled cfgs live in ae_model and need no row)."""

    __tablename__ = "model_configs"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    cfg_text: Mapped[str] = mapped_column(Text)
    # What a listing shows of the parsed cfg (api.services.models), stored at upload so a
    # listing parses nothing; null for rows uploaded before migration 0009 until first listed.
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Darknet .weights uploaded for this cfg (POST /v1/models/{id}/weights), which a job starts
    # from with "init": {"source": "model_weights"}: ``path`` relative to the artifact root,
    # ``cutoff``, ``size``, ``sha256``, ``layers`` and the header (api.services.model_weights).
    weights: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ComparisonStatus(StrEnum):
    """Whether a comparison may still add seeds (``api.core.comparison_rounds``)."""

    running = "running"
    decided = "decided"  # seeds until decided: the confidence sequence settled it
    max_reached = "max_reached"  # seeds until decided: max seeds tried, undecided
    finished = "finished"  # fixed seeds: every job ended
    cancelled = "cancelled"  # a job was cancelled on request: no further rounds
    failed = "failed"  # seeds until decided: no job succeeded, so no round would help


class Comparison(Base):
    """Arms (e.g. baseline and AE) trained over the same seeds, compared pair by pair."""

    __tablename__ = "comparisons"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status: Mapped[str] = mapped_column(
        String(20), default=ComparisonStatus.running, server_default="running", index=True
    )
    # Rounds of seeds started: the conditional UPDATE that adds a round bumps it, so two
    # processes that see the last job end at once add one round (migration 0012).
    rounds: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    stop_reason: Mapped[str | None] = mapped_column(Text, default=None)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Job(Base):
    """A training job: the spec as submitted and as resolved, and where it stands."""

    __tablename__ = "jobs"
    # A tenant's jobs in a state (its active ones, counted by every submission), and its jobs.
    __table_args__ = (Index("ix_jobs_tenant_state", "tenant_id", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    comparison_id: Mapped[int | None] = mapped_column(
        ForeignKey("comparisons.id", ondelete="CASCADE"), index=True, default=None
    )
    arm: Mapped[str | None] = mapped_column(String(64), default=None)
    seed: Mapped[int | None] = mapped_column(Integer, default=None)
    state: Mapped[str] = mapped_column(String(20), default=JobState.queued, index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    resolved: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    queue: Mapped[str] = mapped_column(String(64), default="cpu")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # When its task was last sent to the broker: a job queued long after that, on a queue the
    # broker holds nothing for, lost its message (a broker restarted without persistence).
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    max_batches: Mapped[int | None] = mapped_column(Integer, default=None)
    # Bumped each time stored metric rows are deleted (a rollback, in the same transaction):
    # the API keeps metric pages under the version they were read at (api.metric_pages).
    metrics_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    failure_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class JobEvent(Base):
    """The job's log of state transitions, with a message a person can act on."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    state: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text, default="")


class Metric(Base):
    """One scalar of a job at one iteration; append-only, unique per (job, key, step) so a
    resumed attempt re-writing a step cannot duplicate it."""

    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("job_id", "key", "step"),
        # The order metric pages are read in (migration 0006).
        Index("ix_metrics_job_step_key", "job_id", "step", "key"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    # Passes over the training images at this step (iterations x batch / images); darknet
    # counts iterations, users often think in epochs.
    epoch: Mapped[float | None] = mapped_column(Float, default=None)
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Checkpoint(Base):
    """A checkpoint file of a job in the artifact store."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    iteration: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # Relative to the artifact root (jobs/12/last.pt): each process joins its own root.
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookSecret(Base):
    """A tenant's key for signing webhook bodies (HMAC-SHA256), made on first use and
    rotatable (``api.core.webhooks``)."""

    __tablename__ = "webhook_secrets"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookDelivery(Base):
    """One webhook call to make: a transactional outbox row, inserted in the transaction of
    the state change it reports, sent by the API's dispatcher (``api.webhooks``) until the
    receiver answers 2xx or the attempts run out.

    ``job_id`` and ``comparison_id`` are no foreign keys: a delivery outlives the deletion of
    what it reports on (a finished job deleted before its last call went out).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int | None] = mapped_column(Integer, index=True, default=None)
    comparison_id: Mapped[int | None] = mapped_column(Integer, index=True, default=None)
    event: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Set for events sent once per subject (comparison.running): a second insert conflicts.
    once_key: Mapped[str | None] = mapped_column(String(100), unique=True, default=None)
    # pending (to send, or being sent until next_attempt_at), delivered, or failed (gave up).
    state: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
