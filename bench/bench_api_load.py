"""HTTP load on the API and metric ingest into the database, loopback only.

Two measurements, each bounded in time and count:

1. **Metrics polling.** A real ``aetrain serve`` (uvicorn, no worker) on a fresh database;
   one job with ``--steps`` steps of metric rows. ``--clients`` asyncio clients each poll
   ``GET /v1/jobs/{id}/metrics?limit=1000`` (a 1,000-point page) every ``--poll-s`` seconds,
   each over a connection of its own, while ``--submitters`` clients submit jobs (queued; no
   worker runs). After ``--warmup-s`` seconds (connections opening, first pages built) it
   measures for ``--duration-s`` seconds: latency p50/p90/p99/max per request kind, the
   throughput, and the CPU time per request of the API server, PostgreSQL (when local) and the
   clients, which share the machine (Linux /proc).
2. **Metric ingest.** What a worker's flush does: ``api.core.jobstore.insert_metrics`` in batches
   of ``--batch-rows`` rows, for ``--ingest-rows`` rows; prints rows per second.

    python bench/bench_api_load.py --database postgresql+psycopg://postgres@127.0.0.1:5432/test
    python bench/bench_api_load.py            # SQLite, the embedded default

With a PostgreSQL URL the bench creates and drops a database of its own next to the one named.
"""

import argparse
import asyncio
import contextlib
import math
import os
import platform
import re
import resource
import shlex
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from api.auth import create_tenant_with_key
from api.client import free_port, wait_until_serving
from api.core import jobstore as job_ops
from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import Dataset, Job, utcnow
from api.migrate import upgrade

METRIC_KEYS = ("loss", "loss_box", "loss_obj", "loss_cls", "lr", "ae_alpha", "images_per_s")


@contextmanager
def database(url: str | None, home: Path) -> Iterator[str]:
    """A fresh, migrated database: a new PostgreSQL database beside ``url``, or SQLite."""
    if url is None:
        fresh = f"sqlite:///{home / 'aetrain.db'}"
        upgrade(fresh)
        yield fresh
        return
    name = f"aetrain_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    fresh = make_url(url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(fresh)
        yield fresh
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed(
    url: str, home: Path, steps: int, state: str, checkpoint_at: int, jobs: int,
    nan_rollbacks: int = 0,
) -> tuple[str, int, list[int]]:  # fmt: skip
    """An API key, a ready dataset row and ``jobs`` jobs in ``state``, each with ``steps``
    steps of metrics, ``train.nan_rollbacks`` in its spec and, when ``checkpoint_at`` > 0, a
    checkpoint recorded at that step."""
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        key = create_tenant_with_key(session, "bench").key
        tenant = session.scalars(select(Tenant.id)).one()
        dataset = Dataset(tenant_id=tenant, name="bench", path=str(home), class_names=[])
        spec = {"train": {"nan_rollbacks": nan_rollbacks}}
        polled = [Job(tenant_id=tenant, spec=spec, state=state) for _ in range(jobs)]
        session.add_all([dataset, *polled])
        session.commit()
        now = utcnow()
        rows = [
            (k, step, None, 1.0 / step, now) for step in range(1, steps + 1) for k in METRIC_KEYS
        ]
        for job in polled:
            for start in range(0, len(rows), 10_000):
                job_ops.insert_metrics(session, job.id, rows[start : start + 10_000])
            if checkpoint_at > 0:
                job_ops.record_checkpoint(
                    session, job.id, "last.pt", iteration=checkpoint_at, metrics={}, size=0,
                    sha256="0" * 64, path=str(home / "last.pt"),
                )  # fmt: skip
        dataset_id, job_ids = dataset.id, [job.id for job in polled]
    if engine.dialect.name == "postgresql":
        # What autovacuum does within a minute of a bulk insert: without statistics the
        # planner takes the job for a few rows and sorts all of them for every page.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE metrics"))
    engine.dispose()
    return key, dataset_id, job_ids


def ingest(url: str, total_rows: int, batch_rows: int) -> float:
    """Rows per second through ``insert_metrics`` (one transaction per batch)."""
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        tenant = session.scalars(select(Tenant.id)).one()
        job = Job(tenant_id=tenant, spec={})
        session.add(job)
        session.commit()
        now = utcnow()
        steps = total_rows // len(METRIC_KEYS)
        rows = [(k, step, None, 0.5, now) for step in range(1, steps + 1) for k in METRIC_KEYS]
        start = time.perf_counter()
        for first in range(0, len(rows), batch_rows):
            job_ops.insert_metrics(session, job.id, rows[first : first + batch_rows])
        seconds = time.perf_counter() - start
    engine.dispose()
    return len(rows) / seconds


@contextmanager
def server(url: str, home: Path, workers: int, live_page_s: float) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETRAIN_")}
    env.update(AETRAIN_HOME=str(home), DATABASE_URL=url, AETRAIN_MAX_ACTIVE_JOBS="1000000",
               AETRAIN_LIVE_PAGE_S=str(live_page_s))  # fmt: skip
    log = (home / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--no-embedded-worker",
         "--workers", str(workers)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, proc, home / "serve.log", 60)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # still answering a backlog of queued requests
            proc.kill()
            proc.wait()
        log.close()


async def load(
    base: str, key: str, job_ids: list[int], dataset_id: int, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Latencies (s) of the answered requests per kind, and the count that got no answer
    within the client's timeout; a non-2xx answer aborts the bench. Requests started in the
    first ``--warmup-s`` seconds (200 connections opening, pages built for the first time)
    go under ``warm-up``."""
    kinds = ("metrics page", "submit job", "warm-up")
    latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
    failures = dict.fromkeys(kinds, 0)
    headers = {"Authorization": f"Bearer {key}"}
    measured_from = time.monotonic() + args.warmup_s
    end = measured_from + args.duration_s
    timeout = httpx.Timeout(args.timeout_s)
    tls = ssl.create_default_context()  # unused on http://, but each client would load its own

    def client() -> httpx.AsyncClient:
        # One connection per client, as separate dashboards would hold: one pool shared by
        # all would cost the load generator time scanning 200 connections per request.
        limits = httpx.Limits(max_connections=1)
        return httpx.AsyncClient(
            base_url=base, headers=headers, limits=limits, timeout=timeout, verify=tls
        )

    async def timed(
        kind: str, request: Awaitable[httpx.Response], check: Callable[[httpx.Response], bool]
    ) -> float:
        started = time.monotonic()
        kind = kind if started >= measured_from else "warm-up"
        try:
            r = await request
            assert check(r), r.text[:200]
            latencies[kind].append(time.monotonic() - started)
        except httpx.TransportError:  # timed out or refused: the server is saturated
            failures[kind] += 1
        return time.monotonic() - started

    # Whole steps up to 1,000 rows, or every row after since_step when fewer.
    newer = args.steps - max(args.since_step, 0)  # steps are 1..steps
    expected = min(1000 // len(METRIC_KEYS), newer) * len(METRIC_KEYS)
    params = {"limit": 1000, "since_step": args.since_step}

    async def poller(offset: float, job_id: int) -> None:
        await asyncio.sleep(offset)  # spread the clients over one polling period
        async with client() as c:
            while time.monotonic() < end:
                took = await timed(
                    "metrics page",
                    c.get(f"/v1/jobs/{job_id}/metrics", params=params),
                    lambda r: r.status_code == 200 and _page_count(r.content) == expected,
                )
                await asyncio.sleep(max(0.0, args.poll_s - took))

    async def submitter() -> None:
        body = {"model": "yolov3-tiny-small", "dataset_id": dataset_id}
        async with client() as c:
            while time.monotonic() < end:
                await timed(
                    "submit job", c.post("/v1/jobs", json=body), lambda r: r.status_code == 201
                )
                await asyncio.sleep(args.submit_every_s)

    await asyncio.gather(
        *(
            poller(args.poll_s * i / args.clients, job_ids[i % len(job_ids)])
            for i in range(args.clients)
        ),
        *(submitter() for _ in range(args.submitters)),
    )
    return latencies, failures


def _page_count(body: bytes) -> int:
    """A metrics page's ``count``, read from the body's tail: parsing all 1,000 points in
    each of 200 clients would cost the shared cores more than the server spends on the page."""
    match = re.search(rb'"count":\s*(\d+)', body[-200:])
    return int(match.group(1)) if match else -1


def _process_cpu(pid: int) -> float:
    """CPU seconds so far of process ``pid`` (Linux /proc; 0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _process_tree_cpu(pid: int) -> float:
    """CPU seconds so far of ``pid`` and its descendants: the API server's processes while
    they run, so its start-up is not counted."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += _process_cpu(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def _postgres_cpu() -> float:
    """CPU seconds so far of this machine's PostgreSQL processes (0 when it runs elsewhere)."""
    return sum(
        _process_cpu(int(proc.name))
        for proc in Path("/proc").iterdir()
        if proc.name.isdigit() and _comm(proc) == "postgres"
    )


def _comm(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:
        return ""


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", help="PostgreSQL URL (default: SQLite)")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--api-workers", type=int, default=1, help="aetrain serve --workers")
    parser.add_argument("--poll-s", type=float, default=1.0, help="each client's polling period")
    parser.add_argument("--submitters", type=int, default=2)
    parser.add_argument("--submit-every-s", type=float, default=0.5)
    parser.add_argument("--duration-s", type=float, default=30.0, help="measured, after warm-up")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="not counted, first")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="client timeout per request")
    parser.add_argument("--steps", type=int, default=2000, help="metric steps stored for the job")
    parser.add_argument("--ingest-rows", type=int, default=200_000)
    parser.add_argument("--batch-rows", type=int, default=2000, help="rows per worker flush")
    parser.add_argument(
        "--job-state", default="running", choices=["running", "succeeded"],
        help="of the polled job: the API keeps a finished job's pages",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="polled jobs; client i polls job i mod N (one job: every client the same page)",
    )  # fmt: skip
    parser.add_argument(
        "--live-page-s", type=float, default=0.0,
        help="the server's AETRAIN_LIVE_PAGE_S: seconds a running job's newest page is reused",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoint-at", type=int, default=0,
        help="record a checkpoint of the job at this step (0: none): the API keeps a running "
        "job's pages that end before it",
    )  # fmt: skip
    parser.add_argument(
        "--nan-rollbacks", type=int, default=0,
        help="the jobs' train.nan_rollbacks: a job that may roll back has only its pages "
        "before its checkpoint kept, one that may not every full page",
    )  # fmt: skip
    parser.add_argument(
        "--since-step", type=int, default=-1,
        help="clients ask for the page after this step; within 142 steps of --steps it "
        "reaches the newest rows, which the API builds for every request",
    )  # fmt: skip
    args = parser.parse_args()
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, database(args.database, Path(tmp)) as url:
        home = Path(tmp)
        kind = make_url(url).get_backend_name()
        key, dataset_id, job_ids = seed(
            url, home, args.steps, args.job_state, args.checkpoint_at, args.jobs,
            args.nan_rollbacks,
        )  # fmt: skip
        rate = ingest(url, args.ingest_rows, args.batch_rows)
        print(f"\ningest ({kind}): {args.ingest_rows:,} rows in batches of {args.batch_rows:,}: "
              f"{rate:,.0f} rows/s")  # fmt: skip
        with server(url, home, args.api_workers, args.live_page_s) as (base, pid):
            clients_cpu, server_cpu, db_cpu = _own_cpu(), _process_tree_cpu(pid), _postgres_cpu()
            start = time.monotonic()
            latencies, failures = asyncio.run(load(base, key, job_ids, dataset_id, args))
            wall = time.monotonic() - start
            clients_cpu = _own_cpu() - clients_cpu
            server_cpu = _process_tree_cpu(pid) - server_cpu
            db_cpu = _postgres_cpu() - db_cpu
    checkpoint = f"at step {args.checkpoint_at}" if args.checkpoint_at else "none"
    print(f"\nload ({kind}, {args.api_workers} API process(es)): {args.clients} clients "
          f"polling a metrics page (since_step {args.since_step}, limit 1000) of {args.jobs} "
          f"{args.job_state} job(s) of {args.steps} steps x {len(METRIC_KEYS)} keys "
          f"(nan_rollbacks {args.nan_rollbacks}, checkpoint: {checkpoint}; newest page reused "
          f"for {args.live_page_s:g} s) every "
          f"{args.poll_s:g} s, {args.submitters} submitting a job every "
          f"{args.submit_every_s:g} s; measured for {args.duration_s:g} s after "
          f"{args.warmup_s:g} s of warm-up")  # fmt: skip
    print(f"{'request':<14} {'count':>7} {'per s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'no answer':>10}")  # fmt: skip
    for name, values in latencies.items():
        seconds = args.warmup_s if name == "warm-up" else args.duration_s
        ms = [1000 * v for v in values] or [math.nan]
        print(f"{name:<14} {len(values):>7} {len(values) / seconds:>7.1f} "
              f"{percentile(ms, 50):>8.1f} {percentile(ms, 90):>8.1f} {percentile(ms, 99):>8.1f} "
              f"{max(ms):>8.1f} {failures[name]:>10}")  # fmt: skip
    answered = sum(len(v) for v in latencies.values()) or 1
    busy = (server_cpu + db_cpu + clients_cpu) / wall / (os.cpu_count() or 1)
    print(f"CPU per answered request, warm-up included (ms): API server "
          f"{1000 * server_cpu / answered:.2f}, PostgreSQL {1000 * db_cpu / answered:.2f}, "
          f"clients {1000 * clients_cpu / answered:.2f}; "
          f"the CPUs {100 * busy:.0f}% busy")  # fmt: skip


if __name__ == "__main__":
    main()
