"""The local store's object endpoint: what presigned URLs point at when the store is a
local directory. Every request must carry a valid, unexpired HMAC signature."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid

import blake3
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from .. import signing
from ..errors import BodyTooLarge, IntegrityFailure, InvalidRequest, NotFound
from ..stores.local import LocalStore, local_etag
from .http import gateway


class _BigChunkFileResponse(FileResponse):
    chunk_size = 1024 * 1024  # fewer thread hops per byte than the 64 KiB default


def _local_store(request: Request) -> LocalStore:
    store = gateway(request).store
    if not isinstance(store, LocalStore):
        raise NotFound("this gateway's store is not local: use the store's own URLs")
    return store


def _verified_params(request: Request, store: LocalStore, method: str) -> dict[str, str]:
    params = dict(request.query_params)
    signing.verify(store.secret, method, store.blob_path(request.path_params["key"]), params)
    return params


async def put_part(request: Request) -> Response:
    store = _local_store(request)
    key = request.path_params["key"]
    params = _verified_params(request, store, "PUT")
    size, number = int(params["size"]), int(params["part"])
    path = store.part_path(key, params["upload"], number)
    if not path.parent.is_dir():
        raise NotFound("no such upload (completed or aborted)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > size:
        raise BodyTooLarge(f"part {number} must be {size} bytes", limit=size)
    want_md5 = request.headers.get("content-md5")
    md5 = hashlib.md5() if want_md5 else None
    want_b3 = params.get("b3")
    b3 = blake3.blake3() if want_b3 else None
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    written = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        # Plain writes on the event loop: a 64 KiB write into the page cache takes
        # microseconds, far less than handing each piece to a thread.
        async for piece in request.stream():
            written += len(piece)
            if written > size:
                raise BodyTooLarge(f"part {number} must be {size} bytes", limit=size)
            if md5:
                md5.update(piece)
            if b3:
                b3.update(piece)
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
        os.close(fd)
        fd = -1
        if written != size:
            raise InvalidRequest(
                f"part {number} is truncated: {written} of {size} bytes",
                received=written,
                expected=size,
            )
        if md5 and base64.b64encode(md5.digest()).decode() != want_md5:
            raise IntegrityFailure(f"part {number} does not match its Content-MD5")
        if b3 and base64.b64encode(b3.digest()).decode() != want_b3:
            raise IntegrityFailure(f"part {number} does not match its signed BLAKE3 checksum")
        os.replace(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp.exists():
            tmp.unlink()
    return Response(status_code=200, headers={"etag": f'"{number}-{size}"'})


async def get_object(request: Request) -> Response:
    store = _local_store(request)
    params = _verified_params(request, store, "GET")
    path = store.object_path(request.path_params["key"])
    if not path.is_file():
        raise NotFound("no such object")
    if "etag" in params and local_etag(path.stat()) != params["etag"]:  # a pinned read
        return JSONResponse(
            {"error": {"code": "precondition_failed", "message": "the object changed"}},
            status_code=412,
        )
    return _BigChunkFileResponse(path, media_type="application/octet-stream")


routes = [
    Route("/v1/blobs/{key:path}", put_part, methods=["PUT"]),
    Route("/v1/blobs/{key:path}", get_object, methods=["GET"]),
]
