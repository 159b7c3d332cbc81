"""Routes of the upload protocol; the logic is in ``chunkyard.repository.uploads``."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ..errors import InvalidRequest
from ..manifest import Term
from ..repository import uploads
from ..stores.base import CompletedPart
from . import models as m
from .routing import JSON, Binary, Call, Endpoint


async def create_session(call: Call[None, None, m.CreateSession]) -> dict[str, Any]:
    return await uploads.create_session(call.repo, call.body.name)


async def find_missing(call: Call[m.SessionPath, None, bytes]) -> dict[str, Any]:
    return await uploads.find_chunks(call.repo, call.path.sid, call.body)


async def begin_pack(call: Call[m.SessionPath, None, m.BeginPack]) -> dict[str, Any]:
    b = call.body
    return await uploads.begin_pack(call.repo, call.path.sid, b.pack, b.size, b.checksums)


async def complete_pack(call: Call[m.PackPath, None, m.CompletePack]) -> dict[str, Any]:
    tail = None
    if call.body.index is not None:
        try:
            tail = base64.b64decode(call.body.index, validate=True)
        except (ValueError, binascii.Error):
            raise InvalidRequest("index must be base64") from None
    parts = [CompletedPart(p.number, p.etag, p.checksum) for p in call.body.parts]
    return await uploads.complete_pack(call.repo, call.path.sid, call.path.pack, parts, tail)


async def commit(call: Call[m.SessionPath, None, m.Commit]) -> Any:
    files = []
    for f in call.body.files:
        for _, first, end in f.terms:
            if first >= end:
                raise InvalidRequest(
                    f"file {f.path!r}: a term's chunk range must satisfy first < end"
                )
        files.append(
            uploads.FileEntry(
                f.path,
                f.size,
                f.digest,
                tuple(Term(*t) for t in f.terms),
                f.from_version,
            )
        )
    result = await uploads.commit(
        call.repo, call.path.sid, call.body.layout, files, dict(call.body.tags)
    )
    return JSON(result, status_code=201 if result["created"] else 200)


endpoints = [
    Endpoint(
        "POST",
        "/v1/sessions",
        create_session,
        "open an upload session for an artifact",
        body_model=m.CreateSession,
        response_model=m.Session,
        status=201,
        body_limit=64 * 1024,
    ),
    Endpoint(
        "POST",
        "/v1/sessions/{sid}/missing",
        find_missing,
        "which chunk ids (a body of concatenated 32-byte ids) are stored, and where",
        path_model=m.SessionPath,
        body_model=Binary,
        response_model=m.Missing,
        body_limit=uploads.MAX_QUERY_IDS * 32,
    ),
    Endpoint(
        "POST",
        "/v1/sessions/{sid}/packs",
        begin_pack,
        "begin or resume a pack upload; returns presigned part requests",
        path_model=m.SessionPath,
        body_model=m.BeginPack,
        response_model=m.PackPlan,
        body_limit=4 * 1024 * 1024,
    ),
    Endpoint(
        "POST",
        "/v1/sessions/{sid}/packs/{pack}/complete",
        complete_pack,
        "assemble, index and verify an uploaded pack",
        path_model=m.PackPath,
        body_model=m.CompletePack,
        response_model=m.PackState,
        body_limit=16 * 1024 * 1024,
    ),
    Endpoint(
        "POST",
        "/v1/sessions/{sid}/commit",
        commit,
        "create the version from file manifests, atomically (200: unchanged content)",
        path_model=m.SessionPath,
        body_model=m.Commit,
        response_model=m.VersionSummary,
        status=201,
        extra_status={200: "the content equals the latest version, which is answered"},
    ),
]
