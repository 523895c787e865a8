"""The ``aetrain`` command: model commands from ae_model plus the service's own commands.

Module-level imports stay free of torch so ``aetrain serve`` runs an API process without it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer
from sqlalchemy.exc import OperationalError

from ae_model.cli import app as model_app
from ae_model.cli import datasets_app
from api.client_cli import jobs_app, models_app, register_dataset_commands

app = typer.Typer(
    name="aetrain",
    help="Train YOLO detectors with Assisted Excitation, and tell a gain from seed noise.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Merged without a name: `aetrain layers ...`, not `aetrain model layers ...`.
app.add_typer(model_app)

# The API's resources through its client: `aetrain jobs|models ...`, and `aetrain datasets
# list|show|upload`, whose `generate` runs on the server unless given --out.
register_dataset_commands(datasets_app)
app.add_typer(jobs_app, name="jobs", no_args_is_help=True)
app.add_typer(models_app, name="models", no_args_is_help=True)

db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    revision: str = typer.Argument("head", help="Alembic revision to migrate to."),
) -> None:
    """Apply migrations to the configured database (the embedded SQLite file by default)."""
    from api.core.settings import get_settings
    from api.migrate import upgrade

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url()
    try:
        upgrade(url, revision)
    except OperationalError as error:
        typer.echo(f"error: cannot reach the database ({error.orig}); check DATABASE_URL", err=True)
        raise typer.Exit(code=2) from error
    typer.echo(f"database at revision {revision}")


keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _session_factory() -> Any:
    from api.core.db import make_engine, make_session_factory
    from api.core.settings import get_settings

    return make_session_factory(make_engine(get_settings().resolved_database_url()))


def _require_migrated() -> None:
    """Exit 2, saying to run ``aetrain db upgrade``, unless the database is migrated."""
    from api.core.settings import get_settings
    from api.migrate import check_up_to_date

    try:
        check_up_to_date(get_settings().resolved_database_url())
    except RuntimeError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error


@keys_app.command("create")
def keys_create(tenant: str = typer.Argument(..., help="Tenant name (created if new).")) -> None:
    """Print a new API key for TENANT. It is shown once; only its hash is stored."""
    from api.auth import create_tenant_with_key

    _require_migrated()
    with _session_factory()() as session:
        issued = create_tenant_with_key(session, tenant)
    typer.echo(issued.key)


@keys_app.command("list")
def keys_list(
    tenant: str | None = typer.Option(None, help="Only this tenant's keys."),
) -> None:
    """List API keys: id, tenant, the key's first characters, created and revoked times."""
    from api.auth import list_keys

    _require_migrated()
    with _session_factory()() as session:
        for key in list_keys(session, tenant):
            revoked = f"revoked {key.revoked_at:%Y-%m-%d %H:%M:%S}" if key.revoked_at else "active"
            typer.echo(
                f"{key.id}\t{key.tenant.name}\t{key.prefix}...\t"
                f"created {key.created_at:%Y-%m-%d %H:%M:%S}\t{revoked}"
            )


@keys_app.command("revoke")
def keys_revoke(
    key: str = typer.Argument(..., help="The key's id, or its first characters (aet_...)."),
) -> None:
    """Revoke an API key: API processes refuse it within AETRAIN_KEY_CACHE_S seconds."""
    from api.auth import revoke_key
    from api.core.settings import get_settings

    _require_migrated()
    with _session_factory()() as session:
        try:
            revoked = revoke_key(session, key)
        except LookupError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=1) from error
        typer.echo(
            f"revoked key {revoked.id} ({revoked.prefix}...) of tenant {revoked.tenant.name} "
            f"at {revoked.revoked_at:%Y-%m-%d %H:%M:%S}; API processes refuse it within "
            f"{get_settings().key_cache_s:g} s (AETRAIN_KEY_CACHE_S)"
        )


def _worker_command(queues: str, concurrency: int) -> list[str]:
    # prefork + one task per child (set in the Celery config): each job gets a fresh process,
    # so CUDA state and memory never leak from one job into the next.
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--pool=prefork", f"--concurrency={concurrency}", "-Q", queues, "--loglevel=INFO",
    ]  # fmt: skip


def _worker_env(concurrency: int) -> dict[str, str]:
    """The environment of a worker running ``concurrency`` jobs at once: unless set already,
    AETRAIN_WORKER_THREADS shares the cores among them."""
    # The cores this process may run on (Linux); elsewhere all of them.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    return {"AETRAIN_WORKER_THREADS": str(max(1, cores // concurrency)), **os.environ}


@app.command()
def worker(
    queues: str = typer.Option(
        "cpu", help="Comma-separated queues to consume (one per GPU class)."
    ),
    concurrency: int = typer.Option(
        1, min=1, help="Jobs at once: one per GPU; on CPU each gets cores / N torch threads."
    ),
) -> None:
    """Run a Celery worker that trains jobs from the configured broker and database."""
    raise typer.Exit(
        subprocess.call(_worker_command(queues, concurrency), env=_worker_env(concurrency))
    )


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    embedded_worker: bool = typer.Option(
        True, help="With the embedded broker, also run a worker process (stopped on exit)."
    ),
    workers: int = typer.Option(1, min=1, help="API processes (one per CPU core serves most)."),
) -> None:
    """Run the HTTP API. With nothing configured it runs embedded: SQLite, a file-system broker
    and a worker process, all under AETRAIN_HOME; the first start creates an API key."""
    import uvicorn

    from api.client import terminate_as_exit
    from api.core.settings import get_settings
    from api.main import create_app
    from api.migrate import upgrade

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.database_url is None:
        upgrade(settings.resolved_database_url())  # the embedded database is ours to migrate
        key_file = settings.home / "api_key"
        if not key_file.exists():
            from api.auth import create_tenant_with_key

            with _session_factory()() as session:
                key = create_tenant_with_key(session, "local").key
            key_file.write_text(key + "\n")
            key_file.chmod(0o600)
        typer.echo(f"embedded mode: data in {settings.home}; API key in {key_file}")
        # The key rides in the fragment, which the browser never sends to the server.
        link_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        key = key_file.read_text().strip()
        typer.echo(f"dashboard (signs in with the local key): http://{link_host}:{port}/#key={key}")
    child = None
    if settings.embedded_broker and embedded_worker:
        jobs = settings.embedded_jobs
        child = subprocess.Popen(_worker_command("cpu", jobs), env=_worker_env(jobs))
    # uvicorn re-raises SIGTERM after its graceful shutdown; as SystemExit it lets the
    # `finally` below stop the worker instead of killing this process on the spot.
    with terminate_as_exit():
        try:
            if workers == 1:
                uvicorn.run(create_app(settings), host=host, port=port)
            else:  # each process builds the same app from the environment's settings
                uvicorn.run(
                    "api.main:create_app", factory=True, host=host, port=port, workers=workers
                )
        finally:
            if child is not None:
                _stop_worker(child)


def _stop_worker(child: subprocess.Popen[bytes]) -> None:
    """Celery's warm shutdown (SIGTERM) lets a running job finish; if that takes longer than
    30 s, a cold shutdown (SIGQUIT), then SIGKILL, stop it with its last checkpoint on disk."""
    for stop in (signal.SIGTERM, signal.SIGQUIT, signal.SIGKILL):
        child.send_signal(stop)
        try:
            child.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


TERMINAL = ("succeeded", "failed", "cancelled")


def _comparison_progress(jobs: list[dict[str, Any]], lengths: dict[int, int]) -> tuple[int, str]:
    """Iterations trained over all jobs, and which jobs are done and which run (``ae16 s2``)."""
    done = sum(lengths[j["id"]] if j["state"] in TERMINAL else j["iteration"] for j in jobs)
    finished = sum(j["state"] in TERMINAL for j in jobs)
    running = [f"{j['arm']} s{j['seed']}" for j in jobs if j["state"] == "running"]
    return done, f"{finished}/{len(jobs)} jobs done" + "".join(f", {r}" for r in running)


def run_comparison(
    client: Any, body: dict[str, Any], out: Path, poll_s: float = 1.0
) -> dict[str, Any]:
    """Submit a comparison, follow it with a progress bar, then print its table and verdict and
    save ``comparison-<id>.json`` and ``comparison-<id>.png`` in ``out``."""
    from ae_model.progress import Progress

    created = client.post("/v1/comparisons", body)
    cid, jobs_total = created["id"], created["progress"]["total"]
    arms, seeds = len(created["spec"]["arms"]), created["spec"]["seeds"]
    # Seeds until decided add rounds: the bar counts up to max seeds, and may stop short.
    most = seeds["max"] / seeds["min"] if isinstance(seeds, dict) else 1
    said = (
        f"{seeds['min']} to {seeds['max']} seeds until decided, {jobs_total} jobs first"
        if isinstance(seeds, dict)
        else f"{len(seeds)} seeds = {jobs_total} jobs"
    )
    typer.echo(f"comparison {cid}: {arms} arms x {said}")
    for warning in created["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    # Each job's length is resolved at submission (epochs become iterations there).
    lengths = {j["id"]: j["max_batches"] or 1 for j in created["jobs"]}
    bar = Progress(round(sum(lengths.values()) * most), "train")
    try:
        while True:
            state = client.get(f"/v1/comparisons/{cid}")
            lengths.update({j["id"]: j["max_batches"] or 1 for j in state["jobs"]})
            bar.update(*_comparison_progress(state["jobs"], lengths))
            if state["status"] != "running":  # every job ended, and no round will be added
                break
            time.sleep(poll_s)
    finally:
        bar.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"comparison-{cid}.json").write_text(json.dumps(state, indent=2))
    plot = client.download(f"/v1/comparisons/{cid}/plot.png", out / f"comparison-{cid}.png")
    typer.echo(state["table"] or "no job succeeded: nothing to compare")
    for note in state["notes"]:
        typer.echo(f"note: {note}")
    typer.echo(f"plot: {plot}\nall numbers: {out / f'comparison-{cid}.json'}")
    result: dict[str, Any] = state
    return result


def _client(server: str | None, api_key: str | None) -> Any:
    from api.client import Client

    if not api_key:
        raise typer.BadParameter("--api-key (or AETRAIN_API_KEY) is needed with --server")
    return Client(server or "", api_key)


@app.command()
def compare(
    spec: Path = typer.Argument(..., help="JSON body of POST /v1/comparisons (see docs/api.md)."),
    server: str | None = typer.Option(None, help="A running aetrain server; default: embedded."),
    api_key: str | None = typer.Option(None, envvar="AETRAIN_API_KEY", help="With --server."),
    out: Path = typer.Option(Path("aetrain-comparison"), help="Where the table and plot go."),
) -> None:
    """Run a comparison (arms x seeds) and print the paired statistics and verdict."""
    from api.client import ApiError, embedded_server
    from api.core.settings import get_settings

    body = json.loads(spec.read_text())
    try:
        if server:
            run_comparison(_client(server, api_key), body, out)
        else:
            with embedded_server(get_settings(), out / "server.log") as client:
                run_comparison(client, body, out)
    except ApiError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error


# The quickstart's setting (README): the easy generated shapes, a network and recipe tuned to
# learn them fast (docs/training.md, "Recommended recipe"), so that its comparison is between
# detectors that detect; about 5 minutes on two CPU cores for 2 arms x 3 seeds.
QUICKSTART_MODEL = "yolov3-tiny-small-tuned"
QUICKSTART_DATA = {"kind": "shapes", "train": 240, "val": 60, "size": 128, "seed": 0,
                   "min_scale": 0.12, "max_scale": 0.35, "max_objects": 4}  # fmt: skip
# The learning rate, burn-in and schedule come from the tuned cfg; a rollback (at a tenth of
# the rate) saves a seed whose loss blows up at that high rate instead of failing it.
QUICKSTART_TRAIN = {"max_batches": 1000, "batch": 8, "subdivisions": 1, "width": 128,
                    "height": 128, "multiscale": False, "eval_interval": 300,
                    "checkpoint_interval": 300, "workers": 1, "nan_rollbacks": 2}  # fmt: skip


@app.command()
def quickstart(
    out: Path = typer.Option(Path("aetrain-quickstart"), help="Where the table and plot go."),
    seeds: int = typer.Option(3, min=1, max=20, help="Seeds per arm."),
    max_batches: int = typer.Option(
        QUICKSTART_TRAIN["max_batches"], min=1, help="Iterations per job."
    ),
    server: str | None = typer.Option(None, help="A running aetrain server; default: embedded."),
    api_key: str | None = typer.Option(None, envvar="AETRAIN_API_KEY", help="With --server."),
) -> None:
    """Generate a shapes dataset, train baseline vs AE (stride 16) over a few seeds on a small
    YOLOv3-tiny, and print whether AE's difference is larger than seed noise."""
    from api.client import ApiError, embedded_server
    from api.core.settings import get_settings

    def go(client: Any) -> None:
        started = time.perf_counter()
        typer.echo("generating the shapes dataset ...")
        dataset = client.post(
            "/v1/datasets/generate", {**QUICKSTART_DATA, "name": "quickstart shapes"}
        )
        body = {
            "name": f"quickstart: AE at stride 16 vs baseline, {QUICKSTART_MODEL} on shapes",
            "base": {"model": QUICKSTART_MODEL, "dataset_id": dataset["id"],
                     "train": {**QUICKSTART_TRAIN, "max_batches": max_batches}},
            "arms": [{"name": "baseline", "ae": None},
                     {"name": "ae-stride16", "ae": {"layers": {"stride": 16}}}],
            "seeds": list(range(seeds)),
        }  # fmt: skip
        run_comparison(client, body, out)
        typer.echo(f"quickstart took {(time.perf_counter() - started) / 60:.1f} minutes")

    try:
        if server:
            go(_client(server, api_key))
        else:
            with embedded_server(get_settings(), out / "server.log") as client:
                go(client)
    except ApiError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error


if __name__ == "__main__":
    app()
