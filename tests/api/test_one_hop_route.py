"""OneHopRoute: a plain-function endpoint still runs off the event loop, its answer is still
checked against its response model, and every route of api.routes is built that way."""

import importlib
import inspect
import pkgutil
import threading
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.testclient import TestClient
from pydantic import BaseModel

from api import routes
from api.routes import OneHopRoute


class Answer(BaseModel):
    thread: int


def test_a_plain_endpoint_runs_in_a_worker_thread_and_its_answer_is_checked() -> None:
    router = APIRouter(route_class=OneHopRoute)

    @router.get("/plain", response_model=Answer)
    def plain(n: int = 1) -> dict[str, int]:
        # An extra key the response model must drop, as FastAPI does for any route.
        return {"thread": threading.get_ident(), "secret": n}

    @router.get("/loop", response_model=Answer)
    async def loop() -> dict[str, int]:
        return {"thread": threading.get_ident()}

    @router.get("/stream", response_class=EventSourceResponse)
    async def stream() -> AsyncIterator[ServerSentEvent]:
        for n in range(2):
            yield ServerSentEvent(data={"n": n}, id=str(n))

    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        plain_answer = client.get("/plain?n=3").json()
        loop_answer = client.get("/loop").json()
        refused = client.get("/plain?n=x")
        streamed = client.get("/stream")
    assert set(plain_answer) == {"thread"}
    assert plain_answer["thread"] != loop_answer["thread"]
    assert refused.status_code == 422  # parameters still read from the wrapped signature
    assert "/plain" in app.openapi()["paths"]
    # A generator streams as FastAPI streams it: left as it is.
    assert streamed.status_code == 200
    assert streamed.text.count("data: ") == 2 and 'data: {"n": 1}' in streamed.text


def test_every_route_of_the_api_is_a_coroutine_for_fastapi() -> None:
    """A router made without ``route_class=OneHopRoute`` would take two thread-pool trips
    per request for its plain-function routes."""
    modules = [
        importlib.import_module(f"api.routes.{m.name}")
        for m in pkgutil.iter_modules(routes.__path__)
    ]
    found = [r for m in modules for r in m.router.routes if isinstance(r, APIRoute)]
    assert len(found) > 30
    assert [r.path for r in found if not isinstance(r, OneHopRoute)] == []
    awaited_or_streamed = (inspect.iscoroutinefunction, inspect.isasyncgenfunction)
    assert [r.path for r in found if not any(is_(r.endpoint) for is_ in awaited_or_streamed)] == []
