"""Routes for names, versions, aliases, tags, downloads and stats."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response, StreamingResponse

from ..names import version_ref
from ..repository import artifacts, downloads
from . import models as m
from .ranges import parse_range
from .routing import Binary, Call, Endpoint

V = "/v1/artifacts/{name:path}/-"


async def list_artifacts(call: Call[None, m.ListArtifactsQuery, None]) -> dict[str, Any]:
    q = call.query
    return await artifacts.list_artifacts(call.repo, q.prefix, q.cursor, q.limit)


async def list_versions(call: Call[m.NamePath, m.PageQuery, None]) -> dict[str, Any]:
    q = call.query
    return await artifacts.list_versions(call.repo, call.path.name, q.cursor, q.limit)


async def show_version(call: Call[m.VersionPath, None, None]) -> dict[str, Any]:
    return await artifacts.show(call.repo, call.path.name, version_ref(call.path.ref))


async def add_tags(call: Call[m.VersionPath, None, m.SetTags]) -> dict[str, Any]:
    p = call.path
    return await artifacts.set_tags(call.repo, p.name, version_ref(p.ref), dict(call.body.tags))


async def set_alias(call: Call[m.AliasPath, None, m.SetAlias]) -> dict[str, Any]:
    p, b = call.path, call.body
    return await artifacts.set_alias(call.repo, p.name, p.alias, b.version, b.expect)


async def reconstruction(call: Call[m.FileIndexPath, m.RangeQuery, None]) -> dict[str, Any]:
    p, q = call.path, call.query
    return await downloads.reconstruction(
        call.repo, p.name, version_ref(p.ref), p.index, q.start, q.length
    )


async def reconstructions(call: Call[m.VersionPath, None, m.Reconstructions]) -> dict[str, Any]:
    p = call.path
    return await downloads.reconstructions(call.repo, p.name, version_ref(p.ref), call.body.files)


async def content(call: Call[m.VersionPath, m.ContentQuery, None]) -> Response:
    """Plain streaming download through the gateway, for curl and simple consumers."""
    p = call.path
    v, f = await downloads.open_content(call.repo, p.name, version_ref(p.ref), call.query.path)
    rng = parse_range(call.request.headers.get("range"), f.size)
    start, end = rng or (0, f.size)
    headers = {"accept-ranges": "bytes", "content-length": str(end - start)}
    if f.digest:  # an unhashed reference has none
        headers["x-chunkyard-digest"] = f.digest
    if rng:
        headers["content-range"] = f"bytes {start}-{end - 1}/{f.size}"
    return StreamingResponse(
        downloads.stream(call.repo, v, f, start, end),
        status_code=206 if rng else 200,
        headers=headers,
        media_type="application/octet-stream",
    )


async def stats(call: Call[None, None, None]) -> dict[str, Any]:
    return await artifacts.stats(call.repo)


endpoints = [
    Endpoint(
        "GET",
        "/v1/artifacts",
        list_artifacts,
        "list artifacts by name prefix, paged by a cursor",
        query_model=m.ListArtifactsQuery,
        response_model=m.ArtifactsPage,
    ),
    Endpoint(
        "GET",
        V + "/versions",
        list_versions,
        "list the versions of an artifact, paged by a cursor",
        path_model=m.NamePath,
        query_model=m.PageQuery,
        response_model=m.VersionsPage,
    ),
    Endpoint(
        "GET",
        V + "/versions/{ref}",
        show_version,
        "show a version and its files",
        path_model=m.VersionPath,
        response_model=m.VersionSummary,
    ),
    Endpoint(
        "POST",
        V + "/versions/{ref}/tags",
        add_tags,
        "add write-once tags to a version",
        path_model=m.VersionPath,
        body_model=m.SetTags,
        response_model=m.VersionSummary,
        body_limit=2 * 1024 * 1024,
    ),
    Endpoint(
        "GET",
        V + "/versions/{ref}/files/{index}/reconstruction",
        reconstruction,
        "pack ranges and presigned URLs that rebuild a file (or a range of it), paged",
        path_model=m.FileIndexPath,
        query_model=m.RangeQuery,
        response_model=m.Reconstruction,
    ),
    Endpoint(
        "POST",
        V + "/versions/{ref}/reconstructions",
        reconstructions,
        "whole small files of a version in one answer",
        path_model=m.VersionPath,
        body_model=m.Reconstructions,
        response_model=m.BatchReconstruction,
        body_limit=64 * 1024,
    ),
    Endpoint(
        "GET",
        V + "/versions/{ref}/content",
        content,
        "stream a file through the gateway, every chunk verified (Range supported)",
        path_model=m.VersionPath,
        query_model=m.ContentQuery,
        response_model=Binary,
        extra_status={206: "the requested range"},
    ),
    Endpoint(
        "PUT",
        V + "/aliases/{alias}",
        set_alias,
        "point an alias at a version (compare-and-set with expect; 0: must not exist)",
        path_model=m.AliasPath,
        body_model=m.SetAlias,
        response_model=m.AliasMoved,
        body_limit=64 * 1024,
    ),
    Endpoint(
        "GET",
        "/v1/stats",
        stats,
        "logical and stored bytes, chunks, packs, dedup ratio",
        response_model=m.Stats,
    ),
]
