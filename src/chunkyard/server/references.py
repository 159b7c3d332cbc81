"""Routes for reference versions; the logic is in ``chunkyard.repository.references``."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response, StreamingResponse

from ..names import version_ref
from ..repository import verify as verifying
from ..repository.references import reading, registration
from . import models as m
from .routing import JSON, Call, Endpoints

NDJSON = "application/x-ndjson"
V = "/v1/artifacts/{name:path}/-/versions/{ref}"
api = Endpoints()


@api.post(
    "/v1/references",
    "register an external URI (s3/gs/az prefix or object, http(s) file) as a version, "
    "pinned; with hash, a client accepting application/x-ndjson gets progress lines and "
    "then a done or error line",
    body=m.Register,
    response=m.VersionSummary,
    status=201,
    body_limit=1024 * 1024,
    extra_status={200: "the same objects at the same pins: the latest version"},
)
async def register(call: Call[None, None, m.Register]) -> Response:
    """Registration without hashing answers at once. Hashing can take long: a client
    that accepts NDJSON gets progress lines while it runs (and the work stops if it
    goes away); any other client waits for the one JSON answer."""
    b = call.body
    reg = await registration.prepare(
        call.repo, call.who, b.name, b.uri, dict(b.tags), b.hash, b.index
    )
    if reg.hash and NDJSON in call.request.headers.get("accept", ""):
        return StreamingResponse(registration.register_events(call.repo, reg), media_type=NDJSON)
    result = await registration.register(call.repo, reg)
    return JSON(result, status_code=201 if result["created"] else 200)


@api.post(
    V + "/verify",
    "check a version against its sources and packs: drift per object",
    params=m.VersionPath,
    response=m.VerifyReport,
)
async def verify(call: Call[m.VersionPath, None, None]) -> dict[str, Any]:
    return await verifying.verify(call.repo, call.who, call.path.name, version_ref(call.path.ref))


@api.get(
    V + "/sources",
    "pinned requests for the files of a reference version, paged",
    params=m.VersionPath,
    query=m.SourcesQuery,
    response=m.SourcesPage,
)
async def sources(call: Call[m.VersionPath, m.SourcesQuery, None]) -> dict[str, Any]:
    p, q = call.path, call.query
    return await reading.sources_page(
        call.repo, call.who, p.name, version_ref(p.ref), q.cursor, q.limit
    )
