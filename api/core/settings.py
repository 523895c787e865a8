"""The one settings object, read from the environment (shared by api, worker and CLI).

With nothing set, aetrain runs embedded: a SQLite file and a file-system broker under
``AETRAIN_HOME``. Setting ``DATABASE_URL`` and ``CELERY_BROKER_URL`` switches to PostgreSQL and
Redis without any other change.
"""

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.core.artifacts import parse_s3_url


class Settings(BaseSettings):
    """aetrain's configuration; every field can be set as ``AETRAIN_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="AETRAIN_", extra="ignore", populate_by_name=True)

    home: Path = Field(
        default=Path("~/.aetrain"),
        description="Directory for the embedded database, broker folders and artifacts.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AETRAIN_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; unset means a SQLite file under home.",
    )
    broker_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AETRAIN_BROKER_URL", "CELERY_BROKER_URL"),
        description="Celery broker URL; unset means kombu's filesystem transport under home.",
    )
    result_backend: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AETRAIN_RESULT_BACKEND", "CELERY_RESULT_BACKEND"),
        description="Celery result backend; jobs report through the database, so none is needed.",
    )
    # Longer than the longest job: Redis re-delivers unacknowledged tasks after this many
    # seconds, and acks happen late (after the task), so a short value trains jobs twice.
    visibility_timeout_s: int = Field(default=7 * 24 * 3600, gt=0)
    # A worker stamps its running job's heartbeat this often, from a thread of its own, so a
    # long evaluation or checkpoint write does not read as a dead worker.
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    # A running job whose heartbeat is older than this lost its worker (killed, machine gone):
    # the reaper re-queues it to resume from its last checkpoint, up to the job's max_attempts.
    stale_after_s: float = Field(default=120.0, gt=0)
    reaper_interval_s: float = Field(default=15.0, gt=0)
    # A job still queued this long after its task was sent, on a queue the broker holds no
    # task for, lost its message (Redis restarted without persistence): the reaper sends it
    # again. A copy sent anyway is harmless: the claim trains a job once.
    requeue_queued_after_s: float = Field(default=300.0, gt=0)
    # Webhooks (docs/webhooks.md): the API's dispatcher looks for due deliveries this often,
    # waits this long for a receiver's answer, makes this many attempts, and waits
    # webhook_backoff_s x 4^(n-1) after the n-th failed one.
    webhook_interval_s: float = Field(default=1.0, gt=0)
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    webhook_attempts: int = Field(default=5, ge=1, le=20)
    webhook_backoff_s: float = Field(default=10.0, gt=0)
    # Whether webhooks may call loopback, private and link-local addresses. Off, a tenant
    # cannot make the service POST into its own network; on for a receiver on this machine.
    webhook_allow_private: bool = False
    # Torch threads of each job a worker trains; unset: torch's default (every core). A worker
    # started by `aetrain worker --concurrency N` or `aetrain serve` gets cores / N, so jobs
    # side by side do not oversubscribe the cores (two 2-thread jobs on 2 cores ran ~10x slower).
    worker_threads: int | None = Field(default=None, gt=0)
    # Jobs the worker of `aetrain serve` (embedded broker) trains at once. Small networks use a
    # second thread poorly, so on CPU two 1-thread jobs train about twice as many images per
    # second as one 2-thread job (docs/training.md); set 1 on a one-GPU machine.
    embedded_jobs: int = Field(default=2, gt=0)
    # Per tenant, jobs queued or running at once: one tenant cannot fill every worker's queue.
    max_active_jobs: int = Field(default=100, gt=0)
    # Per image, at the size it trains at: a budget against cfgs no worker could train
    # (yolov3 at 608x608 is 141 BFLOPs; darknet53 at 1024x1024 about 460).
    max_bflops: float = Field(default=1000.0, gt=0)
    # Per API process: seconds a key found valid is trusted without a database lookup, so a
    # key revoked in the database stops working within this time (0: every request looks).
    key_cache_s: float = Field(default=5.0, ge=0)
    # Per API process: metric pages that can no longer change (settled: api.metric_pages)
    # kept ready to send, and a quarter as much for growing pages' settled rows (0: none).
    metrics_cache_mib: float = Field(default=64.0, ge=0)
    # Per API process: seconds a metric page that can still change (a running job's newest
    # rows) is sent again before it is rebuilt, so many clients polling one job cost one build
    # (0, the default: built for every request, rows show as soon as a worker writes them).
    live_page_s: float = Field(default=0.0, ge=0)
    # Millions of trainable parameters (yolov3 has 62, yolov4 64): checked at upload and submit.
    max_params_m: float = Field(default=500.0, gt=0)
    # GiB one training step of a job may need by api.budget's estimate: activations of a
    # micro-batch at the largest training size, weights, gradients and momentum (yolov3 at
    # 416 with its cfg's batch=64, subdivisions=16 and multi-scale: about 5 GiB).
    max_train_memory_gib: float = Field(default=80.0, gt=0)
    # Dataset uploads: the request body, refused while it arrives; then what the zip may
    # extract to (ae_model.data.archive.ArchiveLimits): bytes, members, and the compression
    # ratio of a member (or the whole zip) over 1 MiB.
    max_upload_bytes: int = Field(default=2 << 30, gt=0)
    max_dataset_bytes: int = Field(default=8 << 30, gt=0)
    max_dataset_files: int = Field(default=100_000, gt=0)
    max_compression_ratio: float = Field(default=100.0, gt=1)
    # Classes an uploaded dataset may declare: a job's heads grow with them (yolov3 with 10000
    # classes has 115 M parameters, within max_params_m).
    max_classes: int = Field(default=10_000, gt=0)
    # Every other request body (JSON), refused while it arrives: the largest a client needs
    # is a cfg of 512 Ki characters, written with JSON escapes.
    max_json_bytes: int = Field(default=4 << 20, gt=0)
    # Per tenant, bytes of datasets and jobs' folders on the artifact store: a dataset that
    # would pass it is refused (413), naming what to delete (GET /v1/usage shows the sum).
    max_tenant_bytes: int = Field(default=50 << 30, gt=0)
    # Per tenant and API process: heavy requests (dataset upload or generation, cfg upload)
    # at once; more answer 429, so one tenant's burst cannot hold every heavy thread.
    max_heavy_per_tenant: int = Field(default=2, gt=0)
    # Where checkpoints, datasets and start weights live (docs/artifacts.md): unset, the
    # directory artifacts_dir that every worker and API replica mounts; s3://bucket/prefix, an
    # S3-compatible store reached with boto3's AWS_ENDPOINT_URL and AWS_* credentials.
    artifacts_url: str | None = Field(default=None)
    # The endpoint in the presigned download URLs the API answers with, when API clients reach
    # the store at another address than the API does (docker-compose: localhost vs minio).
    artifacts_public_endpoint: str | None = Field(default=None)

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("artifacts_url")
    @classmethod
    def _check_artifacts_url(cls, value: str | None) -> str | None:
        if value:
            parse_s3_url(value)  # refused at start, saying how to write it
        return value or None

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def cache_dir(self) -> Path:
        """A worker's copies of what it read from a remote artifact store."""
        return self.home / "cache"

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    def resolved_database_url(self) -> str:
        """The database to use: ``database_url`` or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'aetrain.db'}"

    def resolved_broker_url(self) -> str:
        """The broker to use: ``broker_url`` or kombu's server-less file-system transport."""
        return self.broker_url or "filesystem://"

    @property
    def embedded_broker(self) -> bool:
        return self.resolved_broker_url().startswith("filesystem://")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
