"""The FastAPI application, made by :func:`create_app` (``uvicorn --factory api.main:create_app``).

Importing this module builds nothing and touches no file; the app connects to the database and
the broker when it starts. Never imports torch: model work happens in the worker.
"""

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import anyio
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import InterfaceError, OperationalError

from ae_model import __version__
from api.auth import VerifiedKeys
from api.cache import BodyCache
from api.core.broker import create_celery
from api.core.db import make_engine, make_session_factory
from api.core.settings import Settings, get_settings
from api.deps import PAGE_TURNS, POOL_SIZE, STREAM_POLLS, SUBMIT_TURNS
from api.heavy import HeavyWork
from api.kept_pages import KeptPages
from api.metric_pages import SettledRowsCache
from api.migrate import check_up_to_date
from api.reaper import reap_forever
from api.routes import (
    comparisons,
    dashboard,
    database_unavailable_response,
    datasets,
    health,
    jobs,
    models,
    service_error_response,
    usage,
    validation_error_response,
    webhooks,
)
from api.services.errors import ServiceError
from api.services.job_writer import JobWriter
from api.validation import RequestGuard
from api.webhooks import deliver_forever


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for ``settings`` (the environment's when None): its database engine, broker
    producer and reaper are made at start-up.

    Refuses to start on a database that is not migrated to the code's schema.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.resolved_database_url()
        check_up_to_date(url)
        # Sized so that no checkout waits (api.deps); the overflow is slack, not capacity.
        engine = make_engine(url, pool_size=POOL_SIZE, max_overflow=5)
        app.state.settings = settings
        app.state.engine = engine
        app.state.session_factory = make_session_factory(engine)
        app.state.verified_keys = VerifiedKeys(settings.key_cache_s)
        app.state.metrics_pages = BodyCache(int(settings.metrics_cache_mib * 2**20))
        # Growing pages' settled rows: a quarter as much again.
        app.state.settled_rows = SettledRowsCache(int(settings.metrics_cache_mib * 2**18))
        app.state.celery = create_celery(settings)
        app.state.stream_polls = anyio.CapacityLimiter(STREAM_POLLS)
        app.state.heavy = HeavyWork(settings.max_heavy_per_tenant)
        app.state.submit_turns = anyio.CapacityLimiter(SUBMIT_TURNS)
        app.state.page_turns = anyio.CapacityLimiter(PAGE_TURNS)
        # Connections and sessions that only read, each statement on its own: no BEGIN, no
        # ROLLBACK at close.
        app.state.read_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        app.state.read_sessions = make_session_factory(app.state.read_engine)
        # Connections for metric pages answered before routing (api.kept_pages), not pinged
        # before use: the ping is a round trip, a tenth of a running job's page. One that a
        # database restart broke fails its query and the request goes on to the route, whose
        # connections are pinged; the failure has the pool renew the others.
        app.state.unpinged_reads = make_engine(
            url, pool_size=PAGE_TURNS, max_overflow=0, pool_pre_ping=False
        ).execution_options(isolation_level="AUTOCOMMIT")
        app.state.job_writer = JobWriter(app.state.session_factory, app.state.celery, settings)
        # What start-up built (modules, the app, the ORM's mappers) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it, which
        # under load showed as 100 ms stalls every few seconds (bench/bench_api_load.py).
        # Collected first, so no garbage is frozen with it.
        gc.collect()
        gc.freeze()
        reaper = asyncio.create_task(
            reap_forever(app.state.session_factory, app.state.celery, settings)
        )
        dispatcher = asyncio.create_task(deliver_forever(app.state.session_factory, settings))
        try:
            yield
        finally:
            for loop in (reaper, dispatcher):
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            await anyio.to_thread.run_sync(app.state.job_writer.stop)
            engine.dispose()
            app.state.unpinged_reads.engine.dispose()

    app = FastAPI(
        title="aetrain",
        version=__version__,
        description=(
            "Train YOLO detectors from darknet cfgs with Assisted Excitation of Activations, "
            "and compare AE against a baseline over several seeds. Authenticate with "
            "`Authorization: Bearer <API key>`; every resource belongs to the key's tenant."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    _add_offline_docs(app)
    app.add_exception_handler(ServiceError, service_error_response)
    app.add_exception_handler(RequestValidationError, validation_error_response)
    app.add_exception_handler(OperationalError, database_unavailable_response)
    app.add_exception_handler(InterfaceError, database_unavailable_response)
    # Added first, so it runs inside RequestGuard: on URLs that passed its checks.
    app.add_middleware(KeptPages)
    app.add_middleware(RequestGuard, settings=settings)
    app.include_router(health.router)
    app.include_router(datasets.router)
    app.include_router(models.router)
    app.include_router(jobs.router)
    app.include_router(comparisons.router)
    app.include_router(usage.router)
    app.include_router(webhooks.router)
    app.include_router(dashboard.router)
    return app


DOCS_ASSETS = "/docs-assets"


def _add_offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their scripts, styles and icon served by this
    app from the fastapi-offline package: FastAPI's own pages load them from a CDN, and are
    blank without the internet."""
    assets = resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    title, openapi_url = f"{app.title} {app.version}", app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=title,
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )  # fmt: skip

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url, title=title,
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False,
        )  # fmt: skip
