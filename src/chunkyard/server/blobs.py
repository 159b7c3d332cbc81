"""The local store's object endpoint: what its presigned URLs point at. The route only
adapts HTTP; signatures, checksums and files are the local store's business
(:meth:`~chunkyard.stores.local.LocalStore.receive_part`, ``open_signed``)."""

from __future__ import annotations

import anyio
from starlette.responses import FileResponse, Response

from ..errors import BadSignature, NotFound
from ..repository import Repository
from ..stores.local import LocalStore
from . import models as m
from .ranges import parse_range
from .routing import Binary, Call, Empty, Endpoints, body_stream

#: where the gateway serves the local store's objects
BLOB_ROUTE = "/v1/blobs"
api = Endpoints()


class _BigChunkFileResponse(FileResponse):
    chunk_size = 1024 * 1024  # fewer thread hops per byte than the 64 KiB default


def _local_store(repo: Repository) -> LocalStore:
    if not isinstance(repo.store, LocalStore):
        raise NotFound("this gateway's store is not local: use the store's own URLs")
    return repo.store


@api.put(
    BLOB_ROUTE + "/{key:path}",
    "local store: upload one part of a pack (a signed URL the gateway handed out)",
    params=m.BlobPath,
    query=m.BlobPutQuery,
    body=Binary,
    response=Empty,
    streams_body=True,
    public=True,
    headers={"ETag": "the part's ETag, for completing the upload"},
)
async def put_blob_part(call: Call[m.BlobPath, m.BlobPutQuery, None]) -> Response:
    request = call.request
    etag = await _local_store(call.repo).receive_part(
        call.path.key,
        dict(request.query_params),
        body_stream(request),  # a part that stalls is refused (408), its file removed
        request.headers.get("content-md5"),
    )
    return Response(status_code=200, headers={"etag": etag})


@api.get(
    BLOB_ROUTE + "/{key:path}",
    "local store: read a pack (a signed URL; Range supported)",
    params=m.BlobPath,
    query=m.BlobGetQuery,
    response=Binary,
    extra_status={206: "the requested range"},
    public=True,
)
async def get_blob(call: Call[m.BlobPath, m.BlobGetQuery, None]) -> Response:
    store = _local_store(call.repo)
    path, signed = store.open_signed(call.path.key, dict(call.request.query_params))
    if signed is None:
        return _BigChunkFileResponse(path, media_type="application/octet-stream")
    # a URL signed for a range reads within it: what the client asks, or all of it
    size = path.stat().st_size
    start, end = parse_range(call.request.headers.get("range"), size) or signed
    if start < signed[0] or end > signed[1]:
        raise BadSignature(f"this URL reads bytes {signed[0]}-{signed[1] - 1} only")

    data = await anyio.to_thread.run_sync(store.read_range, path, start, end)
    return Response(
        data,
        status_code=206,
        media_type="application/octet-stream",
        headers={"content-range": f"bytes {start}-{start + len(data) - 1}/{size}"},
    )
