"""Routes for reference versions; the logic is in ``chunkyard.gateway.references``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..gateway import artifacts, references
from .http import gateway, int_param, json_body

NDJSON = "application/x-ndjson"


async def register(request: Request) -> Response:
    """Registration without hashing answers at once. Hashing can take long: a client
    that accepts NDJSON gets progress lines while it runs (and the work stops if it
    goes away); any other client waits for the one JSON answer."""
    gw = gateway(request)
    reg = await references.prepare(gw, await json_body(request, 1024 * 1024))
    if reg.hash and NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(references.register_events(gw, reg), media_type=NDJSON)
    result = await references.register(gw, reg)
    return JSONResponse(result, status_code=201 if result["created"] else 200)


async def verify(request: Request) -> JSONResponse:
    return JSONResponse(
        await references.verify(
            gateway(request),
            request.path_params["name"],
            artifacts.parse_ref(request.path_params["ref"]),
        )
    )


async def sources(request: Request) -> JSONResponse:
    return JSONResponse(
        await references.sources_page(
            gateway(request),
            request.path_params["name"],
            artifacts.parse_ref(request.path_params["ref"]),
            int_param(request, "cursor", 0),
            int_param(request, "limit", 1000, 1),
        )
    )


routes = [
    Route("/v1/references", register, methods=["POST"]),
    Route("/v1/artifacts/{name:path}/-/versions/{ref}/verify", verify, methods=["POST"]),
    Route("/v1/artifacts/{name:path}/-/versions/{ref}/sources", sources, methods=["GET"]),
]
