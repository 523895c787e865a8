"""Pages of a job's metric history (``GET /v1/jobs/{id}/metrics``), built from the database and
kept in memory once they can no longer change.

Dashboards and comparisons fetch the same pages again and again (bench/bench_api_load.py: 200
clients, each once a second). A page whose rows can no longer change (settled: see
:func:`job_metrics_page`) is built once per API process and sent again from memory. A page that
still grows, because it reaches a running job's newest rows, is rebuilt per request; its
settled first rows are kept (:class:`SettledRows`) so that only the rows after them are read.
"""

import bisect
from collections.abc import Collection, Hashable, Sequence
from typing import Any, NamedTuple

import anyio
import orjson
from fastapi import HTTPException, status
from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection, Engine
from starlette.datastructures import State

from api.cache import BodyCache, MemoryCache
from api.core.db.models import MAX_ROW_ID, TERMINAL_STATES, Checkpoint, Job, Metric

PageKey = tuple[int, int, str | None, int, int]
"""``(tenant_id, job_id, keys, since_step, limit)``: a page, as a tenant asks for it."""

# A page's query when the request leaves it out: every key, from the first step, 1,000 rows.
DEFAULT_SINCE_STEP = -1
DEFAULT_PAGE_ROWS = 1000
# What the route accepts (api.routes.jobs), and api.kept_pages reads alike.
MIN_SINCE_STEP = -1
MIN_PAGE_ROWS, MAX_PAGE_ROWS = 50, 10_000

# orjson writes NaN and infinities as null (JSON has neither), naive datetimes (SQLite's) as
# UTC and UTC as "Z" (PostgreSQL sessions run in UTC: api.core.db.session), so a body is exactly
# MetricsPage's; it serialises a page in a tenth of the time json.dumps took.
JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


class SettledRows(NamedTuple):
    """The first rows of a page that still grows, which can no longer change: serialised as
    the items of a JSON array, how many, and the step of the last."""

    items: bytes
    rows: int
    last_step: int


# Growing pages keep their settled rows from this many on: a client following a job asks for
# the few rows after the last it saw, under a new since_step each time, and reading a few rows
# costs less than keeping them.
MIN_SETTLED_ROWS = 64
# What an entry costs beside its items (key, tuple, bookkeeping), counted against the budget.
ENTRY_BYTES = 512


class SettledRowsCache(MemoryCache[Hashable, SettledRows]):
    """Settled first rows of growing pages, about ``max_bytes`` in all."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, lambda rows: len(rows.items) + ENTRY_BYTES)


def forget_jobs(
    pages: BodyCache, growing: SettledRowsCache, tenant_id: int, job_ids: Collection[int]
) -> None:
    """Drop the kept pages of the tenant's deleted jobs: they are served without a look at
    the job, and SQLite may give a deleted job's id to the next one."""

    def deleted(key: Hashable) -> bool:
        return isinstance(key, tuple) and key[0] == tenant_id and key[1] in job_ids

    pages.drop(deleted)
    growing.drop(deleted)


async def metrics_page(state: State, key: PageKey, reads: Engine | None = None) -> bytes:
    """The body of the page ``key`` names (or 404): kept, or built (:func:`job_metrics_page`)
    in a thread, on a read-only connection of ``reads`` (``app.state.read_engine`` when
    None), in one of the API process's page turns (``api.deps.PAGE_TURNS``)."""
    kept: bytes | None = state.metrics_pages.get(key)
    if kept is None:
        reads = reads or state.read_engine
        kept = await anyio.to_thread.run_sync(
            _built_page, state, key, reads, limiter=state.page_turns
        )
    return kept


def _built_page(state: State, key: PageKey, reads: Engine) -> bytes:
    # A connection, not a session: a session's bookkeeping around it took a tenth of a
    # running job's page.
    with reads.connect() as connection:
        return job_metrics_page(
            connection, state.metrics_pages, state.settled_rows, key, state.settings.live_page_s
        )


def job_metrics_page(
    connection: Connection, pages: BodyCache, growing: SettledRowsCache, key: PageKey, live_s: float
) -> bytes:
    """The page ``key`` names of the tenant's job (or 404), kept in ``pages`` for good if it
    is settled, or else for ``live_s`` seconds, sent again only while the job still runs.

    A page is settled when every row it depends on is: up to ``boundary``, the first step it
    leaves out (None: the page reached the last row, so a new row could join it).

    - A finished job's whole history is settled.
    - A worker stores a job's rows in step order, a step's rows before the next step's
      (worker.hooks.MetricsWriter flushes its buffer first in, first out, one transaction at
      a time), and a resumed attempt re-writing a step logs the same keys, so it adds nothing
      (Metric is unique per job, key and step). So unless the job may roll back, every step
      before the newest one stored is settled: a full page is, and so are the first rows of a
      growing page up to its last step (kept in ``growing``).
    - A job with ``train.nan_rollbacks`` > 0 may delete the steps after its latest checkpoint
      and train them again (MetricsWriter.after_rollback). Its steps before that checkpoint
      are settled: the worker stores them before it writes the checkpoint
      (MetricsWriter.before_checkpoint), and a rollback goes back to that checkpoint or a
      later one (workers share the artifact store); an evaluation at the checkpoint's own step
      can still add rows there, so only steps strictly before it count. Its later full pages
      hold until the next rollback, which bumps the job's ``metrics_version`` in the
      transaction that deletes the rows: they are kept under the version they were read at,
      which no request reads once the rows have changed.
    """
    tenant_id, job_id, keys, since_step, limit = key
    # Reads only, each a snapshot of its own when ``connection`` reads outside a transaction
    # (as metrics_page's does, sparing the BEGIN and ROLLBACK round trips). The order makes them
    # agree: the job first, since one seen finished has stored all its rows, and a checkpoint
    # seen has its steps stored (a later one only settles more).
    state, checkpoint, may_roll_back, version = job_progress(connection, tenant_id, job_id)
    running = state not in TERMINAL_STATES
    # Kept apart from settled pages, and only read while the job runs: once it has finished,
    # its pages show every row at once, not one left from a second ago.
    live_key = (*key, "live")
    if running and live_s > 0 and (live := pages.get(live_key)) is not None:
        return live
    versioned_key = (*key, "version", version)
    if running and may_roll_back and (kept := pages.get(versioned_key)) is not None:
        return kept
    growing_key = (*key, "settled rows")
    settled = growing.get(growing_key) if running else None
    # A job that may roll back settles a growing page's rows only before its checkpoint.
    before = checkpoint if may_roll_back else None
    body, boundary, settled_now = build_page(
        connection, job_id, keys, since_step, limit, settled, before
    )
    # Done with the database: the connection goes back here, not in a second thread hop.
    connection.close()
    if not running or (boundary is not None and (not may_roll_back or boundary < checkpoint)):
        pages.put(key, body)
    elif boundary is not None:
        pages.put(versioned_key, body)
    else:
        if live_s > 0:
            pages.put(live_key, body, ttl_s=live_s)
        if (
            settled_now is not None
            and settled_now is not settled
            and settled_now.rows >= MIN_SETTLED_ROWS
        ):
            growing.put(growing_key, settled_now)
    return body


_LATEST_CHECKPOINT = (
    select(func.coalesce(func.max(Checkpoint.iteration), -1))
    .where(Checkpoint.job_id == Job.id)
    .scalar_subquery()
)
# Built once: composing it took a tenth of a page built per request.
_PROGRESS = select(
    Job.state,
    _LATEST_CHECKPOINT,
    func.coalesce(Job.spec["train"]["nan_rollbacks"].as_integer(), 0) > 0,
    Job.metrics_version,
).where(Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id"))


def job_progress(connection: Connection, tenant_id: int, job_id: int) -> tuple[str, int, bool, int]:
    """The tenant's job's state, the iteration of its latest recorded checkpoint (-1 before
    its first), whether it may roll back (``train.nan_rollbacks`` > 0) and its
    ``metrics_version``, in one query; 404 for a job that is not the tenant's (other
    tenants' jobs are private)."""
    row = None
    if 0 < job_id <= MAX_ROW_ID:
        ids = {"job_id": job_id, "tenant_id": tenant_id}
        row = connection.execute(_PROGRESS, ids).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return row[0], row[1], bool(row[2]), row[3]


def build_page(
    connection: Connection,
    job_id: int,
    keys: str | None,
    since_step: int,
    limit: int,
    settled: SettledRows | None = None,
    settled_before: int | None = None,
) -> tuple[bytes, int | None, SettledRows | None]:
    """The body of the page of ``job_id``'s rows (of ``keys``) after ``since_step``: whole
    steps, at most ``limit`` rows unless one step has more (then that step alone).

    Also returns the step that decided where the page ends (None: it reached the last row),
    and, when it reached the last row, its rows before that row's step and before
    ``settled_before`` if given (a worker adds no row to them; ``settled`` or None when
    there are none). With ``settled`` (earlier such rows of this page), only the rows after
    them are read.
    """
    start = settled or SettledRows(b"", 0, since_step)
    room = limit - start.rows  # >= 1: settled rows never fill a page (they end before its last)
    params: dict[str, Any] = {"job_id": job_id, "after": start.last_step, "rows": room + 1}
    if keys:
        params["keys"] = [k.strip() for k in keys.split(",") if k.strip()]
    rows: Sequence[Any] = connection.execute(_ROWS_AFTER[bool(keys)], params).all()
    if len(rows) > room:
        boundary = rows[room].step
        # Rows come in step order: those before the boundary are a prefix.
        rows = rows[: bisect.bisect_left(rows, boundary, hi=room, key=_step)]
        if not rows and not start.rows:  # one step has more rows than `limit`: all of it
            params["step"] = boundary
            rows = connection.execute(_ROWS_OF_STEP[bool(keys)], params).all()
        next_step = rows[-1].step if rows else start.last_step
        items = _join(start.items, _items(rows))
        return _body(items, start.rows + len(rows), next_step), boundary, None
    # The page reached the last row: the rows before its step (and settled_before) are settled.
    cut = rows[-1].step if rows else start.last_step
    if settled_before is not None:
        cut = min(cut, settled_before)
    now_settled = bisect.bisect_left(rows, cut, key=_step)
    settled_items = _join(start.items, _items(rows[:now_settled]))
    items = _join(settled_items, _items(rows[now_settled:]))
    if now_settled:
        settled = SettledRows(settled_items, start.rows + now_settled, rows[now_settled - 1].step)
    return _body(items, start.rows + len(rows), None), None, settled


def _page_queries() -> tuple[dict[bool, Any], dict[bool, Any]]:
    """A page's two queries, without and with a ``keys`` filter (``True``): the rows after
    step ``after`` (at most ``rows``), and the rows of one ``step``."""
    # Columns, not ORM objects, on the connection: dashboards poll pages of 1,000 points, and
    # building 1,000 ORM objects per request was most of the cost (bench/bench_api_load.py).
    columns = select(Metric.key, Metric.step, Metric.epoch, Metric.value, Metric.at)
    job_rows = columns.where(Metric.job_id == bindparam("job_id"))
    of_keys = job_rows.where(Metric.key.in_(bindparam("keys", expanding=True)))
    after, of_step = {}, {}
    for with_keys, rows in ((False, job_rows), (True, of_keys)):
        after[with_keys] = (
            rows.where(Metric.step > bindparam("after"))
            .order_by(Metric.step, Metric.key)
            .limit(bindparam("rows"))
        )
        of_step[with_keys] = rows.where(Metric.step == bindparam("step")).order_by(Metric.key)
    return after, of_step


# Built once, with bound parameters, as _PROGRESS: composing them took a fifth of a page build.
_ROWS_AFTER, _ROWS_OF_STEP = _page_queries()


def _step(row: Any) -> int:
    step: int = row.step
    return step


def _items(rows: Sequence[Any]) -> bytes:
    """Rows as the items of a JSON array (MetricPublic's fields), without the brackets."""
    data = [
        {"key": key, "step": step, "epoch": epoch, "value": value, "at": at}
        for key, step, epoch, value, at in rows
    ]
    return orjson.dumps(data, option=JSON_OPTIONS)[1:-1]


def _join(first: bytes, second: bytes) -> bytes:
    return first + b"," + second if first and second else first or second


def _body(items: bytes, count: int, next_step: int | None) -> bytes:
    """MetricsPage's JSON, as orjson would write it, around ``items`` already serialised."""
    after = b"null" if next_step is None else str(next_step).encode()
    return b'{"data":[%b],"count":%d,"next_since_step":%b}' % (items, count, after)
