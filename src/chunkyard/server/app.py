"""The Starlette application: the route table, error mapping, and the lifespan that
opens the repository, sweeps metadata records left pending (and, in ``background``
mode, runs the verifier beside it)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import Response

from ..config import Settings
from ..repository import Repository, metadata, status, verifier
from ..stores import open_store
from ..version import __version__
from . import admin, artifacts, blobs, logs, metrics, references, tokens, uploads
from . import models as m
from .errors import handlers
from .observe import Observe
from .routing import JSON, Call, Endpoint, Endpoints, Text, document, routes

#: glibc's mallopt parameters and the values the gateway fixes them at
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
TRIM_THRESHOLD, MMAP_THRESHOLD = 64 * 1024 * 1024, 4 * 1024 * 1024


def fixed_mmap_threshold() -> None:
    """Serve allocations above 4 MiB from their own mappings, returned on free. glibc
    otherwise raises the threshold to 32 MiB after the first large free, and its
    per-thread arenas then keep freed multi-MiB buffers, so the gateway's peak RSS
    would grow with the size of a push (1.7x from 256 MiB to 4 GiB). Large buffers that
    recur (pack reads for verification) are recycled instead, so fresh mappings stay
    rare. Fixing one threshold also fixes the trim threshold at 128 KiB, and arenas that
    shrink and regrow that often cost a quarter of push throughput: it is set to 64 MiB."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(name)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


api = Endpoints()
LIVENESS = {"response": m.Health, "public": True}


@api.get(
    "/healthz",
    "liveness: the process answers (checks nothing else)",
    response=m.Health,
    public=True,
)
@api.get("/v1/health", "liveness (the same as /healthz)", **LIVENESS)
async def health(call: Call[None, None, None]) -> dict[str, str]:
    return {"status": "ok", "catalog": call.repo.db.dialect}


@api.get(
    "/readyz",
    "readiness: the catalog and the store answer (503 if either does not)",
    response=m.Ready,
    public=True,
    extra_status={503: "not ready: the catalog or the store did not answer"},
)
async def readyz(call: Call[None, None, None]) -> Response:
    checks = await status.readiness(call.repo)
    ready = all(v == "ok" for v in checks.values())
    return JSON(
        {"status": "ready" if ready else "not ready", **checks}, status_code=200 if ready else 503
    )


@api.get("/metrics", "Prometheus metrics (a metrics or admin token)", response=Text)
async def prometheus_metrics(call: Call[None, None, None]) -> Response:
    call.who.require("metrics")
    catalog: metrics.CatalogTotals = call.request.app.state.catalog_totals
    await catalog.refresh(call.repo)
    body, content_type = metrics.render(catalog)
    return Response(body, media_type=content_type)


@api.get("/openapi.json", "this document", public=True)
async def openapi(call: Call[None, None, None]) -> Response:
    return JSON(call.request.app.state.openapi)


ENDPOINTS: list[Endpoint] = [
    *api,
    *uploads.api,
    *references.api,
    *artifacts.api,
    *tokens.api,
    *admin.api,
    *blobs.api,
]


def open_repository_store(settings: Settings):  # type: ignore[no-untyped-def]
    """The store, with the local store's URLs pointing at this gateway's blob route."""
    return open_store(
        settings.store_url, blob_url=settings.public_url + blobs.BLOB_ROUTE, secret=settings.secret
    )


async def _prepare(repo: Repository) -> None:
    """The store's slow first use, done before a request needs it (not awaited: the
    gateway answers meanwhile)."""
    with contextlib.suppress(Exception):
        await anyio.to_thread.run_sync(repo.store.prepare)


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        logs.install([settings.secret])  # after uvicorn set up its handlers, in each worker
        repo = await Repository.open(settings, open_repository_store(settings))
        try:
            await metadata.refuse_lost_catalog(repo.db, repo.store)
        except BaseException:
            await repo.close()
            raise
        app.state.repository = repo
        tasks = [asyncio.create_task(metadata.run(repo))]  # records left pending
        tasks.append(asyncio.create_task(_prepare(repo)))
        if repo.verify_mode == "background":
            tasks.append(asyncio.create_task(verifier.run(repo)))
        # Requests allocate many short-lived objects (rows, dicts) and few cycles: the
        # default thresholds run the cycle collector for ~9% of the gateway's CPU.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        fixed_mmap_threshold()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):  # else the next sweep writes them again
                await metadata.drop_settled(repo)
            await repo.close()

    app = Starlette(
        routes=routes(ENDPOINTS),
        exception_handlers=handlers,
        lifespan=lifespan,
        middleware=[Middleware(Observe)],
    )
    app.state.openapi = document(ENDPOINTS, "chunkyard gateway", __version__)
    app.state.catalog_totals = metrics.CatalogTotals()
    return app


def app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory`` and multi-worker serving: settings from env."""
    import os

    return create_app(
        Settings.load(
            os.environ.get("CHUNKYARD_DATA"),
            os.environ.get("CHUNKYARD_HOST", "127.0.0.1"),
            int(os.environ.get("CHUNKYARD_PORT", "8080")),
        )
    )
