"""Routes of the upload protocol; the logic is in ``chunkyard.repository.uploads``."""

from __future__ import annotations

from typing import Any

import anyio

from ..repository import uploads
from ..stores.base import CompletedPart
from . import models as m
from .routing import JSON, Binary, Call, Endpoints

api = Endpoints()


@api.post(
    "/v1/sessions",
    "open an upload session for an artifact",
    body=m.CreateSession,
    response=m.Session,
    status=201,
    body_limit=64 * 1024,
)
async def create_session(call: Call[None, None, m.CreateSession]) -> dict[str, Any]:
    return await uploads.create_session(call.repo, call.who, call.body.name)


@api.get(
    "/v1/sessions/{sid}",
    "an open upload session, as it was opened: a client that died resumes it",
    params=m.SessionPath,
    response=m.Session,
)
async def resume_session(call: Call[m.SessionPath, None, None]) -> dict[str, Any]:
    return await uploads.resume_session(call.repo, call.who, call.path.sid)


@api.post(
    "/v1/sessions/{sid}/missing",
    "which chunk ids (a body of concatenated 32-byte ids) are stored, and where",
    params=m.SessionPath,
    body=Binary,
    response=m.Missing,
    body_limit=uploads.MAX_QUERY_IDS * 32,
)
async def find_missing(call: Call[m.SessionPath, None, bytes]) -> dict[str, Any]:
    return await uploads.find_chunks(call.repo, call.who, call.path.sid, call.body)


@api.post(
    "/v1/sessions/{sid}/packs",
    "begin or resume a pack upload; returns presigned part requests",
    params=m.SessionPath,
    body=m.BeginPack,
    response=m.PackPlan,
    body_limit=4 * 1024 * 1024,
)
async def begin_pack(call: Call[m.SessionPath, None, m.BeginPack]) -> dict[str, Any]:
    b = call.body
    return await uploads.begin_pack(call.repo, call.who, call.path.sid, b.pack, b.size, b.checksums)


@api.post(
    "/v1/sessions/{sid}/packs/{pack}/complete",
    "assemble, index and verify an uploaded pack",
    params=m.PackPath,
    body=m.CompletePack,
    response=m.PackState,
    body_limit=16 * 1024 * 1024,
)
async def complete_pack(call: Call[m.PackPath, None, m.CompletePack]) -> dict[str, Any]:
    parts = [CompletedPart(p.number, p.etag, p.checksum) for p in call.body.parts]
    p = call.path
    return await uploads.complete_pack(call.repo, call.who, p.sid, p.pack, parts)


@api.post(
    "/v1/sessions/{sid}/commit",
    "create the version from file manifests, atomically (200: unchanged content)",
    params=m.SessionPath,
    body=m.Commit,
    response=m.VersionSummary,
    status=201,
    extra_status={200: "the content equals the latest version, which is answered"},
)
async def commit(call: Call[m.SessionPath, None, m.Commit]) -> Any:
    # a commit may list a million files: turned into entries off the event loop, which
    # meanwhile serves other requests between the thread's turns
    files = await anyio.to_thread.run_sync(_entries, call.body.files)
    b = call.body
    result = await uploads.commit(
        call.repo, call.who, call.path.sid, b.layout, files, dict(b.tags), b.always_new, b.dirs
    )
    return JSON(result, status_code=201 if result["created"] else 200)


def _entries(files: list[m.CommitFile]) -> list[uploads.FileEntry]:
    return [
        uploads.FileEntry(
            f.path,
            f.size,
            f.b3sum,
            tuple(uploads.TermRef(*t) for t in f.terms),
            f.from_version,
            f.file_id or "",
            f.mode,
        )
        for f in files
    ]
