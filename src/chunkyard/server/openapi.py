"""The OpenAPI 3.1 document of the gateway's HTTP API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from .. import __version__

ERROR = {"$ref": "#/components/schemas/Error"}
NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "artifact name, e.g. team/project/model",
    "schema": {"type": "string"},
}
REF = {
    "name": "ref",
    "in": "path",
    "required": True,
    "description": "version number, 'latest', or an alias",
    "schema": {"type": "string"},
}
SID = {"name": "sid", "in": "path", "required": True, "schema": {"type": "string"}}


def _op(
    summary: str,
    params: list | None = None,
    body: dict | None = None,
    ok: str = "200",
    binary_body: bool = False,
    binary_response: bool = False,
) -> dict:
    op: dict[str, Any] = {"summary": summary, "parameters": params or []}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if binary_body:
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    content = (
        {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
        if binary_response
        else {"application/json": {"schema": {"type": "object"}}}
    )
    op["responses"] = {
        ok: {"description": "success", "content": content},
        "default": {"description": "error", "content": {"application/json": {"schema": ERROR}}},
    }
    return op


def document() -> dict[str, Any]:
    v = "/v1/artifacts/{name}/-"
    obj = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "chunkyard gateway", "version": __version__},
        "paths": {
            "/v1/health": {"get": _op("liveness and store/catalog readiness")},
            "/v1/sessions": {
                "post": _op(
                    "open an upload session for an artifact",
                    body={
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}},
                    },
                    ok="201",
                )
            },
            "/v1/sessions/{sid}/missing": {
                "post": _op(
                    "which chunk ids (concatenated 32-byte ids) are stored, and where",
                    [SID],
                    binary_body=True,
                )
            },
            "/v1/sessions/{sid}/packs": {
                "post": _op(
                    "begin or resume a pack upload; returns presigned part requests",
                    [SID],
                    body={
                        "type": "object",
                        "required": ["pack", "size"],
                        "properties": {
                            "pack": {"type": "string"},
                            "size": {"type": "integer"},
                            "checksums": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                )
            },
            "/v1/sessions/{sid}/packs/{pack}/complete": {
                "post": _op(
                    "assemble, verify and index an uploaded pack",
                    [
                        SID,
                        {
                            "name": "pack",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    body=obj,
                )
            },
            "/v1/sessions/{sid}/commit": {
                "post": _op(
                    "create the version from file manifests, atomically",
                    [SID],
                    body={
                        "type": "object",
                        "required": ["layout", "files"],
                        "properties": {
                            "layout": {"enum": ["file", "tree"]},
                            "files": {"type": "array", "items": obj},
                            "tags": {"type": "object"},
                        },
                    },
                    ok="201",
                )
            },
            "/v1/artifacts": {
                "get": _op(
                    "list artifacts by prefix",
                    [
                        {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    ],
                )
            },
            v + "/versions": {"get": _op("list versions of an artifact", [NAME])},
            v + "/versions/{ref}": {"get": _op("show a version", [NAME, REF])},
            v + "/versions/{ref}/tags": {"post": _op("add write-once tags", [NAME, REF], body=obj)},
            v + "/versions/{ref}/files/{index}/reconstruction": {
                "get": _op(
                    "pack ranges and presigned URLs that rebuild a file",
                    [
                        NAME,
                        REF,
                        {
                            "name": "index",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer"},
                        },
                    ],
                )
            },
            v + "/versions/{ref}/reconstructions": {
                "post": _op(
                    "whole small files in one answer ({files: [index, ...]}, at most 1024)",
                    [NAME, REF],
                    body=obj,
                )
            },
            v + "/versions/{ref}/content": {
                "get": _op(
                    "stream a file through the gateway (Range supported)",
                    [NAME, REF, {"name": "path", "in": "query", "schema": {"type": "string"}}],
                    binary_response=True,
                )
            },
            v + "/aliases/{alias}": {
                "put": _op(
                    "move an alias (compare-and-set with expect)",
                    [
                        NAME,
                        {
                            "name": "alias",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    body={
                        "type": "object",
                        "required": ["version"],
                        "properties": {
                            "version": {"type": "integer"},
                            "expect": {"type": "integer"},
                        },
                    },
                )
            },
            "/v1/references": {
                "post": _op(
                    "register an external URI (s3/gs/az prefix or object, http(s) file) as "
                    "a version, pinned; with hash, the answer is NDJSON progress lines "
                    "then a done or error line when the client accepts application/x-ndjson",
                    body={
                        "type": "object",
                        "required": ["name", "uri"],
                        "properties": {
                            "name": {"type": "string"},
                            "uri": {"type": "string"},
                            "hash": {"type": "boolean"},
                            "index": {"type": "boolean"},
                            "tags": {"type": "object"},
                        },
                    },
                    ok="201",
                )
            },
            v + "/versions/{ref}/verify": {
                "post": _op(
                    "check a version against its sources: drift per object",
                    [NAME, REF],
                )
            },
            v + "/versions/{ref}/sources": {
                "get": _op(
                    "pinned requests for the files of a reference version, paged",
                    [
                        NAME,
                        REF,
                        {"name": "cursor", "in": "query", "schema": {"type": "integer"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    ],
                )
            },
            "/v1/stats": {"get": _op("logical and stored bytes, chunks, packs, dedup ratio")},
            "/v1/blobs/{key}": {
                "put": _op("local store: upload one part (signed URL)", binary_body=True),
                "get": _op("local store: read an object (signed URL, Range)", binary_response=True),
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "detail": {"type": "object"},
                            },
                        }
                    },
                }
            }
        },
    }
