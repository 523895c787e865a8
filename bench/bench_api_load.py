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

With ``--closed-loop``, instead: throughput per scenario. For each scenario (submit a job,
read a running job's page that reaches its newest rows, read a finished job's 1,000-point
page) and each ``--clients`` count, that many clients each send the next request as soon as
the last is answered, for ``--warmup-s`` + ``--duration-s`` seconds; a line per run with
requests/s, p50/p99, the answers that were not 2xx, requests without an answer, and CPU per
request of the server, PostgreSQL and the clients. During submit runs the queued jobs are
taken every ``--taken-every-s`` seconds, as workers would take them, so the tenant's active
jobs (counted by every submission) stay few. ``--compare-code DIR`` serves another
source tree beside this one (the same database and broker, a tenant of its own) and
alternates the runs between them, so both see the same load from whatever else shares the
machine.

    python bench/bench_api_load.py --database postgresql+psycopg://postgres@127.0.0.1:5432/test
    python bench/bench_api_load.py            # SQLite, the embedded default
    python bench/bench_api_load.py --closed-loop --clients 50 200 --api-workers 2 \
        --database postgresql+psycopg://postgres@127.0.0.1:5432/test \
        --broker redis://127.0.0.1:6379/8

With a PostgreSQL URL the bench creates and drops a database of its own next to the one named.
"""

import argparse
import asyncio
import contextlib
import json
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
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import redis
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import make_url

from api.auth import create_tenant_with_key
from api.client import free_port, wait_until_serving
from api.core import jobstore as job_ops
from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import Dataset, Job, JobState, utcnow
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
    key, tenant, dataset_id = seed_tenant(url, home, classes=0)
    job_ids = seed_jobs(url, home, tenant, steps, state, checkpoint_at, jobs, nan_rollbacks)
    return key, dataset_id, job_ids


def seed_tenant(url: str, home: Path, classes: int, name: str = "bench") -> tuple[str, int, int]:
    """An API key of tenant ``name``, its id and the id of a ready dataset row of it with
    ``classes`` classes (0: none named, so a job keeps its cfg's)."""
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        issued = create_tenant_with_key(session, name)
        key, tenant = issued.key, issued.tenant_id
        names = [f"class{i}" for i in range(classes)]
        dataset = Dataset(
            tenant_id=tenant, name="bench", path=str(home), class_names=names, num_train=1000
        )
        session.add(dataset)
        session.commit()
        dataset_id = dataset.id
    engine.dispose()
    return key, tenant, dataset_id


def seed_jobs(
    url: str, home: Path, tenant: int, steps: int, state: str, checkpoint_at: int = 0,
    jobs: int = 1, nan_rollbacks: int = 0,
) -> list[int]:  # fmt: skip
    """``jobs`` jobs of ``tenant`` in ``state`` (see :func:`seed`); their ids."""
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        spec = {"train": {"nan_rollbacks": nan_rollbacks}}
        polled = [Job(tenant_id=tenant, spec=spec, state=state) for _ in range(jobs)]
        session.add_all(polled)
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
        job_ids = [job.id for job in polled]
    if engine.dialect.name == "postgresql":
        # What autovacuum does within a minute of a bulk insert: without statistics the
        # planner takes the job for a few rows and sorts all of them for every page.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE metrics"))
    engine.dispose()
    return job_ids


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
def server(
    url: str, home: Path, workers: int, live_page_s: float, broker: str | None = None,
    code: Path | None = None,
) -> Iterator[tuple[str, int]]:  # fmt: skip
    """``aetrain serve`` with ``workers`` processes on ``url``, the ``broker`` URL (None: the
    embedded file-system broker, no worker), run from the source tree ``code`` (None: this
    one): its base URL and process id."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETRAIN_")}
    env.update(AETRAIN_HOME=str(home), DATABASE_URL=url, AETRAIN_MAX_ACTIVE_JOBS="1000000",
               AETRAIN_LIVE_PAGE_S=str(live_page_s))  # fmt: skip
    if broker is not None:
        env["CELERY_BROKER_URL"] = broker
    log = (home / f"serve-{port}.log").open("wb")
    # `python -m` puts the working directory first on sys.path: that tree's api is served.
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--no-embedded-worker",
         "--workers", str(workers)],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=code,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_serving(base, proc, Path(log.name), 60)
        except RuntimeError:  # the log goes with the temporary home: show it now
            sys.stderr.write(Path(log.name).read_text(errors="replace")[-3000:])
            raise
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


def percentile(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


class Tally(NamedTuple):
    """What one closed-loop run got: latencies (s) of the answered requests, answers by
    status, and requests without an answer (within the client's timeout) by what happened."""

    latencies: list[float]
    statuses: Counter[int]
    no_answer: Counter[str]


CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


def http_request(method: str, path: str, key: str, body: dict[str, Any] | None = None) -> bytes:
    """A whole HTTP/1.1 request, written once and sent again by every client."""
    payload = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {key}"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _exchange(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
) -> int:
    """Send ``request`` and read its answer (uvicorn gives every body a Content-Length): the
    status."""
    reader, writer = connection
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = CONTENT_LENGTH.search(head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    return int(head[9:12])


async def closed_loop(
    base: str, request: bytes, clients: int, warmup_s: float, duration_s: float, timeout_s: float,
    at_window: Callable[[], None] = lambda: None,
) -> Tally:  # fmt: skip
    """``clients`` clients, each on a keep-alive connection of its own, sending ``request``
    again as soon as the last answer is read, for ``warmup_s`` (not counted) and then
    ``duration_s`` seconds; ``at_window`` is called as the measured window opens and closes.
    Raw asyncio streams, not httpx: at thousands of requests per second httpx's own CPU time
    would take the cores the server is measured on."""
    host, port = base.removeprefix("http://").split(":")
    tally = Tally([], Counter(), Counter())
    measured_from = time.monotonic() + warmup_s
    end = measured_from + duration_s

    async def window() -> None:
        for edge in (measured_from, end):
            await asyncio.sleep(max(0.0, edge - time.monotonic()))
            at_window()

    async def client() -> None:
        connection = None
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                if connection is None:
                    connection = await asyncio.wait_for(
                        asyncio.open_connection(host, int(port)), timeout_s
                    )
                status = await asyncio.wait_for(_exchange(connection, request), timeout_s)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as error:
                if connection is not None:  # the answer may still come: a new connection
                    connection[1].close()
                connection = None
                if started >= measured_from:
                    tally.no_answer[type(error).__name__] += 1
                continue
            if started >= measured_from:
                tally.latencies.append(time.monotonic() - started)
                tally.statuses[status] += 1
        if connection is not None:
            connection[1].close()

    await asyncio.gather(window(), *(client() for _ in range(clients)))
    return tally


def closed_loop_bench(args: argparse.Namespace) -> None:
    """Each scenario at each client count, against this tree's server and, with
    ``--compare-code``, the other tree's in turn; a line per run."""
    trees = {"this tree": None} | ({args.compare_code: Path(args.compare_code)}
                                  if args.compare_code else {})  # fmt: skip
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp, database(args.database, Path(tmp)) as url:
        home = Path(tmp)
        # A tenant per tree: each server's submissions count only its own queued jobs, so the
        # tree measured second does not count the first one's too.
        requests = {label: _tenant_requests(url, home, f"bench {i}", queue, args)
                    for i, label in enumerate(trees)}  # fmt: skip
        _vacuum(url)  # the seeded rows settled: no autovacuum pass lands in the first run
        print(f"\nclosed loop ({make_url(url).get_backend_name()}, broker {args.broker}, "
              f"{args.api_workers} API process(es) per server): submit = POST /v1/jobs "
              f"{args.model} on a {args.classes}-class dataset; running page = the first page "
              f"of a running job of {args.running_steps} steps x {len(METRIC_KEYS)} keys (it "
              f"reaches the newest rows); finished page = a 1,000-point page of a succeeded job "
              f"of {args.steps} steps; each run {args.warmup_s:g} s warm-up, then "
              f"{args.duration_s:g} s measured; client timeout {args.timeout_s:g} s")  # fmt: skip
        print(f"{'scenario':<14} {'code':<12} {'clients':>7} {'per s':>7} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'non-2xx':>7} {'no ans':>6} {'API ms':>6} {'PG ms':>6} "
              f"{'cli ms':>6} {'load':>5}", flush=True)  # fmt: skip
        try:
            with contextlib.ExitStack() as stack:
                servers = {
                    label: stack.enter_context(
                        server(url, home, args.api_workers, 0.0, args.broker, code)
                    )
                    for label, code in trees.items()
                }
                for scenario in args.scenarios:
                    for clients in args.clients:
                        for label, (base, pid) in servers.items():
                            request = requests[label][scenario]
                            taking = args.taken_every_s if scenario == "submit" else 0.0
                            with _workers_taking_jobs(url, taking):
                                _closed_loop_run(scenario, label, base, pid, request, clients, args)
                            if scenario == "submit":
                                _retire_queued(url)
        finally:
            _drop_queue(args.broker, queue)


def _tenant_requests(
    url: str, home: Path, tenant_name: str, queue: str, args: argparse.Namespace
) -> dict[str, bytes]:
    """The request of each scenario for a new tenant with its dataset, running job and
    finished job."""
    key, tenant, dataset_id = seed_tenant(url, home, args.classes, tenant_name)
    (running,) = seed_jobs(url, home, tenant, args.running_steps, "running")
    (finished,) = seed_jobs(url, home, tenant, args.steps, "succeeded")
    body = {"model": args.model, "dataset_id": dataset_id, "queue": queue}
    return {
        "submit": http_request("POST", "/v1/jobs", key, body),
        "running page": http_request("GET", f"/v1/jobs/{running}/metrics", key),
        "finished page": http_request("GET", f"/v1/jobs/{finished}/metrics", key),
    }


def _closed_loop_run(
    scenario: str, label: str, base: str, pid: int, request: bytes, clients: int,
    args: argparse.Namespace,
) -> None:  # fmt: skip
    """One run, printed as a line: requests/s, p50/p99, answers that were not 2xx (by status
    when there are any), and the CPU per answered request of the server, PostgreSQL and the
    clients."""
    # CPU over the measured window only, as the answers counted.
    cpu: list[tuple[float, float, float]] = []
    tally = asyncio.run(
        closed_loop(
            base, request, clients, args.warmup_s, args.duration_s, args.timeout_s,
            lambda: cpu.append((_own_cpu(), _process_tree_cpu(pid), _postgres_cpu())),
        )
    )  # fmt: skip
    own, api, pg = (after - before for before, after in zip(*cpu, strict=True))
    answered = max(1, len(tally.latencies))
    ms = [1000 * v for v in tally.latencies] or [math.nan]
    bad = {status: n for status, n in tally.statuses.items() if not 200 <= status < 300}
    per_answer = [f"{1000 * seconds / answered:6.2f}" for seconds in (api, pg, own)]
    print(f"{scenario:<14} {label[-12:]:<12} {clients:>7} {answered / args.duration_s:>7.0f} "
          f"{percentile(ms, 50):>7.1f} {percentile(ms, 99):>7.1f} {sum(bad.values()):>7} "
          f"{tally.no_answer.total():>6} {' '.join(per_answer)} {os.getloadavg()[0]:>5.2f}"
          + (f"  statuses {dict(sorted(bad.items()))}" if bad else "")
          + (f"  no answer {dict(tally.no_answer)}" if tally.no_answer else ""),
          flush=True)  # fmt: skip


@contextmanager
def _workers_taking_jobs(url: str, every_s: float) -> Iterator[None]:
    """While the block runs, every ``every_s`` seconds (0: never) the queued jobs are marked
    cancelled, as workers taking them off the queue would move them on: the submitting
    tenant's active jobs stay within what its limit would allow (100 by default) instead of
    growing to the thousands a run submits, whose count every submission pays for (1 ms of
    PostgreSQL per submission at 3,000). The UPDATEs' CPU counts in the PG and client
    columns."""
    if every_s <= 0:
        yield
        return
    engine = create_engine(url)
    stop = threading.Event()

    def take() -> None:
        while not stop.wait(every_s):
            with engine.begin() as conn:
                conn.execute(
                    update(Job)
                    .where(Job.state == JobState.queued)
                    .values(state=JobState.cancelled, finished_at=utcnow())
                )

    taker = threading.Thread(target=take, name="bench-workers", daemon=True)
    taker.start()
    try:
        yield
    finally:
        stop.set()
        taker.join()
        engine.dispose()


def _retire_queued(url: str) -> None:
    """Cancel the jobs a submit run left queued, as workers would have taken them: each run
    starts with its tenant's active jobs as the first did. Counting them is part of every
    submission, and a real tenant has at most AETRAIN_MAX_ACTIVE_JOBS (100 by default), not
    the thousands a run submits."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.state == JobState.queued)
            .values(state=JobState.cancelled, finished_at=utcnow())
        )
    engine.dispose()
    # The rows the update left dead, gone now: otherwise the next run's counts step over them
    # until autovacuum comes by, in whichever run that happens to be.
    _vacuum(url, "jobs")


def _vacuum(url: str, table: str = "") -> None:
    """``VACUUM ANALYZE`` the table (every table when none is named) on PostgreSQL."""
    engine = create_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM ANALYZE {table}"))
    engine.dispose()


def _drop_queue(broker: str | None, queue: str) -> None:
    """Remove the messages the bench sent (its queue and kombu's binding of it) from Redis."""
    if broker is None or not broker.startswith("redis"):
        return
    client = redis.Redis.from_url(broker)
    keys = list(client.scan_iter(match=f"*{queue}*"))
    if keys:
        client.delete(*keys)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", help="PostgreSQL URL (default: SQLite)")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[200],
        help="clients; with --closed-loop several counts, each run in turn",
    )  # fmt: skip
    parser.add_argument("--api-workers", type=int, default=1, help="aetrain serve --workers")
    parser.add_argument(
        "--closed-loop", action="store_true",
        help="instead of polling: each client sends its next request as soon as it has the "
        "answer, per scenario (--scenarios) and client count",
    )  # fmt: skip
    parser.add_argument(
        "--scenarios", nargs="+", default=["submit", "running page", "finished page"],
        choices=["submit", "running page", "finished page"], help="with --closed-loop",
    )  # fmt: skip
    parser.add_argument(
        "--broker", help="the server's CELERY_BROKER_URL, e.g. redis://127.0.0.1:6379/8 "
        "(default: the embedded file-system broker); the bench removes the messages it sent",
    )  # fmt: skip
    parser.add_argument(
        "--compare-code", metavar="DIR",
        help="with --closed-loop, also serve the source tree DIR (e.g. `git archive HEAD | "
        "tar -x -C DIR`) and alternate runs between it and this tree",
    )  # fmt: skip
    parser.add_argument(
        "--taken-every-s", type=float, default=0.25,
        help="with --closed-loop, submit runs: every this many seconds the queued jobs are "
        "marked cancelled, as workers taking them would (0: left queued until the run ends)",
    )  # fmt: skip
    parser.add_argument("--model", default="yolov3-tiny-small", help="submitted jobs' model")
    parser.add_argument(
        "--classes", type=int, default=3,
        help="with --closed-loop, the dataset's classes: heads are retargeted to them",
    )  # fmt: skip
    parser.add_argument(
        "--running-steps", type=int, default=100,
        help="with --closed-loop, the running job's steps: under 143 its first page reaches "
        "its newest rows, read for every request",
    )  # fmt: skip
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
    if not args.closed_loop and len(args.clients) > 1:
        parser.error("polling takes one --clients count; several need --closed-loop")
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    if args.closed_loop:
        closed_loop_bench(args)
    else:
        args.clients = args.clients[0]
        poll_bench(args)


def poll_bench(args: argparse.Namespace) -> None:
    """Clients polling a metrics page while others submit, then the figures (module doc)."""
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
        with server(url, home, args.api_workers, args.live_page_s, args.broker) as (base, pid):
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
