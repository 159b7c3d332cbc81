"""Routes for names, versions, aliases, tags, downloads and stats."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..gateway import artifacts, downloads
from .http import gateway, int_param, json_body
from .ranges import parse_range

V = "/v1/artifacts/{name:path}/-"


def _ref(request: Request) -> artifacts.Ref:
    return artifacts.parse_ref(request.path_params["ref"])


async def list_artifacts(request: Request) -> JSONResponse:
    q = request.query_params
    return JSONResponse(
        await artifacts.list_artifacts(
            gateway(request),
            q.get("prefix", ""),
            q.get("cursor", ""),
            int_param(request, "limit", 100, 1),
        )
    )


async def list_versions(request: Request) -> JSONResponse:
    return JSONResponse(
        await artifacts.list_versions(
            gateway(request),
            request.path_params["name"],
            int_param(request, "cursor", 0),
            int_param(request, "limit", 100, 1),
        )
    )


async def show(request: Request) -> JSONResponse:
    return JSONResponse(
        await artifacts.show(gateway(request), request.path_params["name"], _ref(request))
    )


async def set_tags(request: Request) -> JSONResponse:
    body = await json_body(request, 1024 * 1024)
    return JSONResponse(
        await artifacts.set_tags(
            gateway(request), request.path_params["name"], _ref(request), body.get("tags")
        )
    )


async def set_alias(request: Request) -> JSONResponse:
    body = await json_body(request, 64 * 1024)
    return JSONResponse(
        await artifacts.set_alias(
            gateway(request),
            request.path_params["name"],
            request.path_params["alias"],
            body.get("version"),
            body.get("expect"),
        )
    )


async def reconstruction(request: Request) -> JSONResponse:
    return JSONResponse(
        await downloads.reconstruction(
            gateway(request),
            request.path_params["name"],
            _ref(request),
            request.path_params["index"],
            int_param(request, "start", 0),
            int_param(request, "length", None),
        )
    )


async def reconstructions(request: Request) -> JSONResponse:
    body = await json_body(request)
    return JSONResponse(
        await downloads.reconstructions(
            gateway(request), request.path_params["name"], _ref(request), body.get("files")
        )
    )


async def content(request: Request) -> Response:
    """Plain streaming download through the gateway, for curl and simple consumers."""
    gw, name, ref = gateway(request), request.path_params["name"], _ref(request)
    path = request.query_params.get("path")
    async with gw.db.read() as conn:
        _, f = await downloads.find_file(conn, name, ref, path=path)
    rng = parse_range(request.headers.get("range"), f.size)
    start, end = rng or (0, f.size)
    headers = {"accept-ranges": "bytes", "content-length": str(end - start)}
    if f.digest:  # an unhashed reference has none
        headers["x-chunkyard-digest"] = f.digest
    if rng:
        headers["content-range"] = f"bytes {start}-{end - 1}/{f.size}"
    return StreamingResponse(
        downloads.stream(gw, name, ref, f.path, start, end),
        status_code=206 if rng else 200,
        headers=headers,
        media_type="application/octet-stream",
    )


async def stats(request: Request) -> JSONResponse:
    return JSONResponse(await artifacts.stats(gateway(request)))


routes = [
    Route("/v1/artifacts", list_artifacts, methods=["GET"]),
    Route(V + "/versions", list_versions, methods=["GET"]),
    Route(V + "/versions/{ref}", show, methods=["GET"]),
    Route(V + "/versions/{ref}/tags", set_tags, methods=["POST"]),
    Route(V + "/versions/{ref}/files/{index:int}/reconstruction", reconstruction, methods=["GET"]),
    Route(V + "/versions/{ref}/reconstructions", reconstructions, methods=["POST"]),
    Route(V + "/versions/{ref}/content", content, methods=["GET"]),
    Route(V + "/aliases/{alias}", set_alias, methods=["PUT"]),
    Route("/v1/stats", stats, methods=["GET"]),
]
