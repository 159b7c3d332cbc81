"""Routes for names, versions, aliases, tags, downloads and stats."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response, StreamingResponse

from ..names import version_ref
from ..repository import artifacts, downloads, removal, small
from . import models as m
from .ranges import parse_range
from .routing import JSON, Binary, Call, Endpoints

V = "/v1/artifacts/{name:path}/-"
api = Endpoints()


@api.get(
    "/v1/artifacts",
    "list artifacts by name prefix, paged by a cursor",
    query=m.ListArtifactsQuery,
    response=m.ArtifactsPage,
)
async def list_artifacts(call: Call[None, m.ListArtifactsQuery, None]) -> dict[str, Any]:
    q = call.query
    return await artifacts.list_artifacts(call.repo, call.who, q.prefix, q.cursor, q.limit)


@api.get(
    "/v1/versions",
    "versions carrying every tag given (tag=KEY=VALUE, repeatable), under a name prefix, "
    "by name and number, paged by a cursor",
    query=m.FindVersionsQuery,
    response=m.VersionsFound,
)
async def find_versions(call: Call[None, m.FindVersionsQuery, None]) -> dict[str, Any]:
    q = call.query
    tags = [(key, value) for key, _, value in (t.partition("=") for t in q.tag)]
    return await artifacts.find_versions(call.repo, call.who, q.prefix, tags, q.cursor, q.limit)


@api.get(
    V + "/versions",
    "list the versions of an artifact, paged by a cursor",
    params=m.NamePath,
    query=m.PageQuery,
    response=m.VersionsPage,
)
async def list_versions(call: Call[m.NamePath, m.PageQuery, None]) -> dict[str, Any]:
    q = call.query
    return await artifacts.list_versions(call.repo, call.who, call.path.name, q.cursor, q.limit)


@api.post(
    V + "/versions",
    "push small content in one request: the gateway chunks, dedups and stores it "
    "(201: a new version; 200: the content equals the latest version, which is answered)",
    params=m.NamePath,
    body=m.SmallPush,
    response=m.SmallPushResult,
    status=201,
    extra_status={200: "the content equals the latest version, which is answered"},
    body_limit=small.MAX_BODY,
)
async def push_small(call: Call[m.NamePath, None, m.SmallPush]) -> Any:
    b = call.body
    files = [small.SmallFile(f.path, f.data, f.mode) for f in b.files]
    result = await small.push(
        call.repo, call.who, call.path.name, b.layout, files, dict(b.tags), b.dirs
    )
    return JSON(result, status_code=201 if result["created"] else 200)


@api.get(
    V + "/versions/{ref}",
    "show a version and its files",
    params=m.VersionPath,
    response=m.VersionSummary,
)
async def show_version(call: Call[m.VersionPath, None, None]) -> dict[str, Any]:
    return await artifacts.show(call.repo, call.who, call.path.name, version_ref(call.path.ref))


@api.post(
    V + "/versions/{ref}/tags",
    "add write-once tags to a version",
    params=m.VersionPath,
    body=m.SetTags,
    response=m.VersionSummary,
    body_limit=2 * 1024 * 1024,
)
async def add_tags(call: Call[m.VersionPath, None, m.SetTags]) -> dict[str, Any]:
    p = call.path
    return await artifacts.set_tags(
        call.repo, call.who, p.name, version_ref(p.ref), dict(call.body.tags)
    )


@api.put(
    V + "/aliases/{alias}",
    "point an alias at a version (compare-and-set with expect; 0: must not exist)",
    params=m.AliasPath,
    body=m.SetAlias,
    response=m.AliasMoved,
    body_limit=64 * 1024,
)
async def set_alias(call: Call[m.AliasPath, None, m.SetAlias]) -> dict[str, Any]:
    p, b = call.path, call.body
    return await artifacts.set_alias(call.repo, call.who, p.name, p.alias, b.version, b.expect)


@api.delete(
    V + "/aliases/{alias}",
    "remove an alias (with expect: only if it points at that version); kept in its history",
    params=m.AliasPath,
    query=m.RemoveAliasQuery,
    response=m.AliasRemoved,
)
async def remove_alias(call: Call[m.AliasPath, m.RemoveAliasQuery, None]) -> dict[str, Any]:
    p = call.path
    return await artifacts.remove_alias(call.repo, call.who, p.name, p.alias, call.query.expect)


@api.get(
    V + "/aliases/{alias}", "where an alias points", params=m.AliasPath, response=m.AliasTarget
)
async def show_alias(call: Call[m.AliasPath, None, None]) -> dict[str, Any]:
    return await artifacts.show_alias(call.repo, call.who, call.path.name, call.path.alias)


@api.get(
    V + "/aliases",
    "an artifact's aliases and where they point, by alias, paged by a cursor",
    params=m.NamePath,
    query=m.AliasesQuery,
    response=m.AliasesPage,
)
async def list_aliases(call: Call[m.NamePath, m.AliasesQuery, None]) -> dict[str, Any]:
    q = call.query
    return await artifacts.list_aliases(call.repo, call.who, call.path.name, q.cursor, q.limit)


@api.get(
    V + "/aliases/{alias}/history",
    "every move of an alias, removals too, oldest first: when, from and to which version, "
    "by which token",
    params=m.AliasPath,
    query=m.PageQuery,
    response=m.AliasHistory,
)
async def alias_history(call: Call[m.AliasPath, m.PageQuery, None]) -> dict[str, Any]:
    p, q = call.path, call.query
    return await artifacts.alias_history(call.repo, call.who, p.name, p.alias, q.cursor, q.limit)


@api.get(
    V + "/versions/{ref}/files/{index}/reconstruction",
    "pack ranges and presigned URLs that rebuild a file (or a range of it), paged",
    params=m.FileIndexPath,
    query=m.RangeQuery,
    response=m.Reconstruction,
)
async def reconstruction(call: Call[m.FileIndexPath, m.RangeQuery, None]) -> dict[str, Any]:
    p, q = call.path, call.query
    ref = version_ref(p.ref)
    return await downloads.reconstruction(
        call.repo,
        call.who,
        p.name,
        ref,
        p.index,
        q.start,
        q.length,
        same_host=q.local and call.from_this_machine,
    )


@api.post(
    V + "/versions/{ref}/reconstructions",
    "whole small files of a version in one answer",
    params=m.VersionPath,
    query=m.LocalQuery,
    body=m.Reconstructions,
    response=m.BatchReconstruction,
    body_limit=64 * 1024,
)
async def reconstructions(
    call: Call[m.VersionPath, m.LocalQuery, m.Reconstructions],
) -> dict[str, Any]:
    p = call.path
    return await downloads.reconstructions(
        call.repo,
        call.who,
        p.name,
        version_ref(p.ref),
        call.body.files,
        same_host=call.query.local and call.from_this_machine,
    )


@api.get(
    V + "/versions/{ref}/content",
    "stream a file through the gateway, every chunk verified (Range supported)",
    params=m.VersionPath,
    query=m.ContentQuery,
    response=Binary,
    extra_status={206: "the requested range"},
)
async def content(call: Call[m.VersionPath, m.ContentQuery, None]) -> Response:
    """Plain streaming download through the gateway, for curl and simple consumers."""
    p = call.path
    v, f = await downloads.open_content(
        call.repo, call.who, p.name, version_ref(p.ref), call.query.path
    )
    rng = parse_range(call.request.headers.get("range"), f.size)
    start, end = rng or (0, f.size)
    headers = {"accept-ranges": "bytes", "content-length": str(end - start)}
    if f.digest and v.format >= 3:  # the file id, from verified chunks (unhashed refs: none)
        headers["x-chunkyard-file-id"] = f.digest
    if rng:
        headers["content-range"] = f"bytes {start}-{end - 1}/{f.size}"
    return StreamingResponse(
        downloads.stream(call.repo, v, f, start, end),
        status_code=206 if rng else 200,
        headers=headers,
        media_type="application/octet-stream",
    )


@api.get("/v1/stats", "logical and stored bytes, chunks, packs, dedup ratio", response=m.Stats)
async def stats(call: Call[None, None, None]) -> dict[str, Any]:
    return await artifacts.stats(call.repo, call.who)


@api.delete(
    V + "/versions/{ref}",
    "remove a version (force=1: and the aliases that point at it); its number is never "
    "taken again, its space comes back at the next garbage collection",
    params=m.VersionNumberPath,
    query=m.RemoveQuery,
    response=m.Removed,
)
async def remove_version(call: Call[m.VersionNumberPath, m.RemoveQuery, None]) -> dict[str, Any]:
    p, q = call.path, call.query
    return await removal.remove(call.repo, call.who, p.name, p.ref, force=bool(q.force))


@api.delete(
    V + "/versions",
    "remove every version of an artifact (yes=1 when it has more than one; force=1: and "
    "its aliases); its numbers are never taken again",
    params=m.NamePath,
    query=m.RemoveQuery,
    response=m.Removed,
)
async def remove_artifact(call: Call[m.NamePath, m.RemoveQuery, None]) -> dict[str, Any]:
    q = call.query
    return await removal.remove(
        call.repo, call.who, call.path.name, None, force=bool(q.force), confirm=bool(q.yes)
    )
