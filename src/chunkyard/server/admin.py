"""Admin routes for the repository as a whole: garbage collection. The logic is in
``chunkyard.repository.gc``."""

from __future__ import annotations

from starlette.responses import Response, StreamingResponse

from ..repository import gc
from ..repository.events import ndjson
from . import models as m
from .routing import JSON, Call, Endpoints

NDJSON = "application/x-ndjson"
api = Endpoints()


@api.post(
    "/v1/admin/gc",
    "garbage collection (admin): delete packs no version names once older than the "
    "grace period, abort expired sessions' and unknown multipart uploads; a client "
    "accepting application/x-ndjson gets progress lines, then a done or error line",
    body=m.CollectGarbage,
    response=m.GarbageReport,
    body_limit=4096,
)
async def collect_garbage(call: Call[None, None, m.CollectGarbage]) -> Response:
    b = call.body
    call.who.require("admin")  # before any work, streamed or not
    progress = gc.Progress()
    run = gc.collect(call.repo, call.who, b.grace, b.dry_run, b.delete_orphans, progress)
    if NDJSON in call.request.headers.get("accept", ""):
        lines = ndjson(run, progress.to_json, "garbage collection")
        return StreamingResponse(lines, media_type=NDJSON)
    return JSON(await run)
