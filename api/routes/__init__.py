"""The HTTP edge: a router per resource, each route parsing a request, calling a service
(``api.services``) and returning a schema (``api.schemas``); and the one place a service's
refusal becomes an HTTP status, as do a request's invalid fields and a database it cannot
reach."""

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from api.core.job_spec import UNION_TAGS
from api.services.errors import (
    Conflict,
    Invalid,
    NotFound,
    OverLimit,
    OverQuota,
    ServiceError,
    Unavailable,
)


class OneHopRoute(APIRoute):
    """The route class of every router here: a plain-function endpoint (not a generator)
    runs in the thread pool as FastAPI would run it, but as a coroutine, so FastAPI checks
    and writes its answer on the event loop. For a plain function FastAPI takes a second trip
    to the pool to check the answer (waking a thread, handing the GIL over and back): about
    a tenth of a submission's API CPU (bench/bench_api_load.py)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not _streams_or_awaits(endpoint):
            endpoint = _in_thread_pool(endpoint)
        super().__init__(path, endpoint, **kwargs)


def _streams_or_awaits(endpoint: Callable[..., Any]) -> bool:
    """Whether FastAPI runs ``endpoint`` on the event loop already (a coroutine) or streams
    what it yields (a generator, e.g. an SSE stream): such endpoints are left as they are."""
    return (
        inspect.iscoroutinefunction(endpoint)
        or inspect.isasyncgenfunction(endpoint)
        or inspect.isgeneratorfunction(endpoint)
    )


def _in_thread_pool(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    # FastAPI reads the parameters and the answer's type through functools.wraps.
    @functools.wraps(endpoint)
    async def run(*args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(endpoint, *args, **kwargs)

    return run


SERVICE_ERROR_STATUS: dict[type[ServiceError], int] = {
    NotFound: status.HTTP_404_NOT_FOUND,
    Conflict: status.HTTP_409_CONFLICT,
    Invalid: status.HTTP_422_UNPROCESSABLE_CONTENT,
    OverLimit: status.HTTP_429_TOO_MANY_REQUESTS,
    OverQuota: status.HTTP_413_CONTENT_TOO_LARGE,
    Unavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}


async def service_error_response(request: Request, error: Exception) -> JSONResponse:
    """The answer to a ``ServiceError`` of any kind (the app's handler for the class)."""
    assert isinstance(error, ServiceError)
    code = next(SERVICE_ERROR_STATUS[k] for k in type(error).__mro__ if k in SERVICE_ERROR_STATUS)
    return JSONResponse({"detail": error.detail}, status_code=code)


def _printable(text: str) -> str:
    # A message or location can quote the request; what UTF-8 cannot encode is escaped.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _field_error(error: dict[str, Any]) -> dict[str, Any]:
    loc = [
        part if isinstance(part, int) else _printable(str(part))
        for part in error["loc"]
        if part not in UNION_TAGS
    ]
    return {"type": error["type"], "loc": loc, "msg": _printable(str(error["msg"]))}


async def validation_error_response(request: Request, error: Exception) -> JSONResponse:
    """A request's invalid fields (``RequestValidationError``): FastAPI's list of
    ``{type, loc, msg}``, without the ``input`` FastAPI would echo: a whole body for a body
    of the wrong type, and values no JSON answer can carry."""
    assert isinstance(error, RequestValidationError)
    detail = [_field_error(e) for e in error.errors()]
    return JSONResponse({"detail": detail}, status.HTTP_422_UNPROCESSABLE_CONTENT)


# Seconds a client should wait before retrying while the database is unreachable.
DATABASE_RETRY_AFTER_S = 5


async def database_unavailable_response(request: Request, error: Exception) -> JSONResponse:
    """The answer to a database error that is the server's condition, not the request's
    (SQLAlchemy's ``OperationalError`` and ``InterfaceError``: the database restarting,
    unreachable or refusing connections): 503, with ``Retry-After``."""
    logging.getLogger(__name__).warning("database unavailable: %s", error)
    return JSONResponse(
        {"detail": "the database is unavailable (restarting or unreachable); retry shortly"},
        status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )
