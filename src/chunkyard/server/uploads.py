"""Routes of the upload protocol; the logic is in ``chunkyard.gateway.uploads``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..gateway import uploads
from .http import gateway, json_body, read_body

QUERY_LIMIT = uploads.MAX_QUERY_IDS * 32


async def create_session(request: Request) -> JSONResponse:
    body = await json_body(request, 64 * 1024)
    return JSONResponse(
        await uploads.create_session(gateway(request), body.get("name")), status_code=201
    )


async def missing(request: Request) -> JSONResponse:
    body = await read_body(request, QUERY_LIMIT)
    return JSONResponse(
        await uploads.find_chunks(gateway(request), request.path_params["sid"], body)
    )


async def begin_pack(request: Request) -> JSONResponse:
    body = await json_body(request, 4 * 1024 * 1024)
    return JSONResponse(
        await uploads.begin_pack(gateway(request), request.path_params["sid"], body)
    )


async def complete_pack(request: Request) -> JSONResponse:
    body = await json_body(request, 4 * 1024 * 1024)
    return JSONResponse(
        await uploads.complete_pack(
            gateway(request), request.path_params["sid"], request.path_params["pack"], body
        )
    )


async def commit(request: Request) -> JSONResponse:
    body = await json_body(request)
    result = await uploads.commit(gateway(request), request.path_params["sid"], body)
    return JSONResponse(result, status_code=201 if result["created"] else 200)


routes = [
    Route("/v1/sessions", create_session, methods=["POST"]),
    Route("/v1/sessions/{sid}/missing", missing, methods=["POST"]),
    Route("/v1/sessions/{sid}/packs", begin_pack, methods=["POST"]),
    Route("/v1/sessions/{sid}/packs/{pack}/complete", complete_pack, methods=["POST"]),
    Route("/v1/sessions/{sid}/commit", commit, methods=["POST"]),
]
