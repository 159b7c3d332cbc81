"""Typed endpoints: each route declares its path parameters, query and body as models
(``chunkyard.server.models``); this module decodes a request into them before the
handler runs, and generates the OpenAPI document from the same declarations, so the
document cannot drift from what the server enforces.

A handler gets a :class:`Call` (the repository, the request, and the decoded parts)
and returns a Starlette ``Response`` or anything msgspec can encode as JSON.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import (
    BodyTooLarge,
    ChunkyardError,
    InvalidDigest,
    InvalidName,
    InvalidReference,
    InvalidRequest,
)
from ..repository import Repository

P = TypeVar("P")
Q = TypeVar("Q")
B = TypeVar("B")

#: default limit of a JSON body (a commit of a million files is ~200 MB; bigger
#: versions are pushed as several trees)
JSON_LIMIT = 64 * 1024 * 1024
_INT = re.compile(r"[0-9]{1,19}")
#: a path parameter's Starlette convertor, as in ``{name:path}``
_CONVERTOR = re.compile(r"{([a-z_]+)(:[a-z]+)?}")


class Binary:
    """Marks a raw ``application/octet-stream`` body or response."""


class Empty:
    """Marks a response without a body: what it says is in its headers."""


@dataclass
class Call(Generic[P, Q, B]):
    repo: Repository
    request: Request
    path: P
    query: Q
    body: B


@dataclass
class Endpoint:
    method: str
    path: str
    handler: Callable[[Call], Awaitable[Any]]
    summary: str
    path_model: type | None = None
    query_model: type | None = None
    body_model: type | None = None  # a Struct, or Binary for raw bytes
    response_model: type | None = None  # a Struct, Binary, or Empty
    status: int = 200
    body_limit: int = JSON_LIMIT
    #: the handler reads the body itself (streamed uploads)
    streams_body: bool = False
    extra_status: dict[int, str] = field(default_factory=dict)
    #: headers every success carries: name -> what it holds
    headers: dict[str, str] = field(default_factory=dict)


class Endpoints(list[Endpoint]):
    """A module's endpoints, declared beside their handlers::

    api = Endpoints()

    @api.get("/v1/stats", "storage statistics", response=m.Stats)
    async def stats(call: Call[None, None, None]) -> dict: ...
    """

    def add(
        self,
        method: str,
        path: str,
        summary: str,
        *,
        params: type | None = None,
        query: type | None = None,
        body: type | None = None,
        response: type | None = None,
        **options: Any,
    ) -> Callable[[Callable[[Call], Awaitable[Any]]], Callable[[Call], Awaitable[Any]]]:
        def register(handler: Callable[[Call], Awaitable[Any]]) -> Callable[[Call], Awaitable[Any]]:
            self.append(
                Endpoint(method, path, handler, summary, params, query, body, response, **options)
            )
            return handler

        return register

    def get(self, path: str, summary: str, **kw: Any) -> Callable:
        return self.add("GET", path, summary, **kw)

    def post(self, path: str, summary: str, **kw: Any) -> Callable:
        return self.add("POST", path, summary, **kw)

    def put(self, path: str, summary: str, **kw: Any) -> Callable:
        return self.add("PUT", path, summary, **kw)


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body is larger than {limit} bytes", limit=limit)
    buf = bytearray()
    async for piece in request.stream():
        buf += piece
        if len(buf) > limit:
            raise BodyTooLarge(f"request body is larger than {limit} bytes", limit=limit)
    return bytes(buf)


def _convert(model: type, values: dict[str, str], what: str) -> Any:
    """Path or query strings into ``model``: integers only in ASCII digits (``int()``
    would take ``³`` or ``1_000``)."""
    info = msgspec.inspect.type_info(model)
    known = {f.name: f for f in info.fields}  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for key, raw in values.items():
        f = known.get(key)
        if f is None:
            if what == "query":
                continue  # unknown query parameters are ignored, as HTTP caches add them
            raise InvalidRequest(f"unexpected {what} parameter {key!r}")
        if _wants_int(f.type) and raw != "":
            if not _INT.fullmatch(raw):
                raise InvalidRequest(f"{what} parameter {key!r} must be a non-negative integer")
            out[key] = int(raw)
        elif raw != "" or not _wants_int(f.type):
            out[key] = raw
    try:
        return msgspec.convert(out, model)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, f"{what} parameter", model) from None


def _wants_int(t: msgspec.inspect.Type) -> bool:
    if isinstance(t, msgspec.inspect.IntType):
        return True
    if isinstance(t, msgspec.inspect.UnionType):
        return any(isinstance(x, msgspec.inspect.IntType) for x in t.types)
    return False


#: the error a field's bad value raises, by the field's name (the last name in the
#: path msgspec reports, such as ``$.files[3].digest``): stable codes whatever layer
#: finds the fault
_FIELD_ERRORS: dict[str, type[ChunkyardError]] = {
    "name": InvalidName,
    "alias": InvalidName,
    "tags": InvalidName,
    "path": InvalidName,
    "digest": InvalidDigest,
    "pack": InvalidDigest,
    "uri": InvalidReference,
}
_AT = re.compile(r" - at `(?:key` in `)?(\$[^`]*)`$")
_FIELD = re.compile(r"\.([A-Za-z_]+)(?:\[[^\]]*\])*$")
#: what a pattern stands for, instead of the regular expression in msgspec's message
_RULES = {
    "name": "1 to 16 '/'-separated segments, each starting with a letter or digit and "
    "holding only A-Z a-z 0-9 . _ -",
    "alias": "a letter, then A-Z a-z 0-9 . _ -, at most 64 characters, not 'latest'",
    "tags": "keys of A-Z a-z 0-9 . _ : / -, values without control characters",
    "digest": "64 lower-case hex digits",
    "pack": "64 lower-case hex digits",
}


def validation_error(
    exc: msgspec.ValidationError, what: str, model: type | None = None
) -> ChunkyardError:
    """A msgspec validation error as the project's typed error, naming the field. A
    model may name errors of its own fields in a ``field_errors`` class variable."""
    text = str(exc)
    at = _AT.search(text)
    where = at.group(1) if at else "$"
    field = _FIELD.search(where)
    name = field.group(1) if field else ""
    cls = {**_FIELD_ERRORS, **getattr(model, "field_errors", {})}.get(name, InvalidRequest)
    reason = text[: at.start()] if at else text
    if "matching regex" in reason:
        reason = f"expected {_RULES.get(name, 'a value of the form the API document gives')}"
    return cls(f"invalid {what} at {where}: {reason}", field=where)


def _decode_body(model: type, raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw or b"{}", type=model)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, "request body", model) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def _endpoint_app(ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def app(request: Request) -> Response:
        path = _convert(ep.path_model, dict(request.path_params), "path") if ep.path_model else None
        query = (
            _convert(ep.query_model, dict(request.query_params), "query")
            if ep.query_model
            else None
        )
        body: Any = None
        if ep.body_model is Binary and not ep.streams_body:
            body = await read_body(request, ep.body_limit)
        elif ep.body_model is not None and not ep.streams_body:
            body = _decode_body(ep.body_model, await read_body(request, ep.body_limit))
        result = await ep.handler(Call(request.app.state.repository, request, path, query, body))
        if isinstance(result, Response):
            return result
        return JSON(result, status_code=ep.status)

    return app


def routes(endpoints: list[Endpoint]) -> list[Route]:
    """One Starlette route per path, dispatching on the method, so that a method a
    path does not take answers 405 with ``Allow`` naming every one it does."""
    by_path: dict[str, dict[str, Callable]] = {}
    for ep in endpoints:
        by_path.setdefault(ep.path, {})[ep.method] = _endpoint_app(ep)
    out = []
    for path, apps in by_path.items():

        async def dispatch(request: Request, apps: dict = apps) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await apps[method](request)

        out.append(Route(path, dispatch, methods=list(apps)))
    return out


# -- OpenAPI -----------------------------------------------------------------------------
def _schema_ref(model: type, components: dict[str, Any]) -> dict[str, Any]:
    (schema,), defs = msgspec.json.schema_components(
        [model], ref_template="#/components/schemas/{name}"
    )
    components.update(defs)
    return schema


def _parameters(model: type | None, where: str, components: dict) -> list[dict[str, Any]]:
    if model is None:
        return []
    _schema_ref(model, components)
    props = components[model.__name__]
    fields = msgspec.inspect.type_info(model).fields  # type: ignore[attr-defined]
    ints = {f.encode_name for f in fields if _wants_int(f.type)}
    out = []
    for name, schema in props.get("properties", {}).items():
        required = where == "path" or name in props.get("required", [])
        if where == "query" and name in ints and not required:
            schema = _empty_is_default(schema)
        out.append({"name": name, "in": where, "required": required, "schema": schema})
    del components[model.__name__]  # parameters are listed inline, not as a schema
    return out


def _empty_is_default(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional integer in a query, as :func:`_convert` reads it: an empty value
    (``?limit=``) is the default, as if the parameter were not given. A query cannot
    carry JSON's null, so an optional ``int | None`` is an integer or empty."""
    alternatives = schema.get("anyOf", [{k: v for k, v in schema.items() if k != "default"}])
    integers = [a for a in alternatives if a.get("type") != "null"]
    out: dict[str, Any] = {"anyOf": [*integers, {"type": "string", "maxLength": 0}]}
    if schema.get("default") is not None:
        out["default"] = schema["default"]
    return out


def document(endpoints: list[Endpoint], title: str, version: str) -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    error = _schema_ref(_error_model(), components)
    for ep in endpoints:
        op: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": ep.handler.__name__,
            "parameters": _parameters(ep.path_model, "path", components)
            + _parameters(ep.query_model, "query", components),
        }
        # no body reads as an empty one (_decode_body): zero bytes, or the JSON object {}
        # (so only a model with a required field needs one)
        if ep.body_model is Binary:
            op["requestBody"] = {
                "required": False,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        elif ep.body_model is not None:
            fields = msgspec.inspect.type_info(ep.body_model).fields  # type: ignore[attr-defined]
            op["requestBody"] = {
                "required": any(f.required for f in fields),
                "content": {"application/json": {"schema": _schema_ref(ep.body_model, components)}},
            }
        ok: dict[str, Any] | None
        if ep.response_model is Empty:
            ok = None
        elif ep.response_model is Binary:
            ok = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
        elif ep.response_model is not None:
            ok = {"application/json": {"schema": _schema_ref(ep.response_model, components)}}
        else:
            ok = {"application/json": {"schema": {"type": "object"}}}
        responses: dict[str, Any] = {str(ep.status): {"description": "success"}}
        for status, what in ep.extra_status.items():
            responses[str(status)] = {"description": what}
        for answer in responses.values():
            if ok is not None:
                answer["content"] = ok
            if ep.headers:
                answer["headers"] = {
                    name: {"description": what, "required": True, "schema": {"type": "string"}}
                    for name, what in ep.headers.items()
                }
        responses["default"] = {
            "description": "error: a stable code, a message, and details",
            "content": {"application/json": {"schema": error}},
        }
        op["responses"] = responses
        paths.setdefault(_CONVERTOR.sub(r"{\1}", ep.path), {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components},
    }


def _error_model() -> type:
    from .models import Error

    return Error
