"""Typed endpoints: each route declares its path parameters, query and body as models
(``chunkyard.server.models``); this module decodes a request into them before the
handler runs, and generates the OpenAPI document from the same declarations, so the
document cannot drift from what the server enforces.

A handler gets a :class:`Call` (the repository, the request, and the decoded parts)
and returns a Starlette ``Response`` or anything msgspec can encode as JSON.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, TypeVar, get_args, get_origin

import anyio
import anyio.lowlevel
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
    RequestTimeout,
)
from ..hosts import is_loopback_address
from ..repository import Repository
from ..repository.access import ANYONE, Principal
from ..repository.tokens import authenticate

P = TypeVar("P")
Q = TypeVar("Q")
B = TypeVar("B")

#: a JSON body up to this size is decoded in one call; a larger one a slice at a time
#: (:func:`decode_body`)
DECODE_AT_ONCE = 1024 * 1024
#: items of a long list decoded between two turns of the event loop (about 1 ms)
DECODE_SLICE = 1024
_INT = re.compile(r"[0-9]{1,19}")
#: a path parameter's Starlette convertor, as in ``{name:path}``
_CONVERTOR = re.compile(r"{([a-z_]+)(:[a-z]+)?}")


class Binary:
    """Marks a raw ``application/octet-stream`` body or response."""


class Empty:
    """Marks a response without a body: what it says is in its headers."""


class Text:
    """Marks a ``text/plain`` response (the Prometheus exposition format)."""


@dataclass
class Call(Generic[P, Q, B]):
    repo: Repository
    who: Principal
    request: Request
    path: P
    query: Q
    body: B

    @property
    def from_this_machine(self) -> bool:
        """The request came straight over loopback: its peer is a loopback address and
        no proxy forwarded it (a proxy on this machine passes on others' requests, and
        one that trusts what it is sent would pass ``X-Forwarded-For: 127.0.0.1``)."""
        peer = self.request.client
        headers = self.request.headers
        if peer is None or "x-forwarded-for" in headers or "forwarded" in headers:
            return False
        return is_loopback_address(peer.host)


@dataclass
class Endpoint:
    method: str
    path: str
    handler: Callable[[Call], Awaitable[Any]]
    summary: str
    path_model: type | None = None
    query_model: type | None = None
    body_model: type | None = None  # a Struct, or Binary for raw bytes
    response_model: type | None = None  # a Struct, Binary, Text, or Empty
    status: int = 200
    #: the largest body, bytes; None: the gateway's ``max_body`` (CHUNKYARD_MAX_BODY)
    body_limit: int | None = None
    #: the handler reads the body itself (streamed uploads)
    streams_body: bool = False
    #: needs no token (health, this document, URLs the gateway signed)
    public: bool = False
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

    def delete(self, path: str, summary: str, **kw: Any) -> Callable:
        return self.add("DELETE", path, summary, **kw)


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


def body_stream(request: Request) -> AsyncIterator[bytes]:
    """The request's body as it arrives, under the gateway's body deadline
    (``body_timeout`` and ``body_min_rate`` of its settings): see :func:`paced`."""
    settings = request.app.state.repository.settings
    return paced(request.stream(), settings.body_timeout, settings.body_min_rate)


async def paced(
    body: AsyncIterator[bytes], timeout: float, min_rate: float
) -> AsyncIterator[bytes]:
    """``body``, refused (:class:`RequestTimeout`, 408) as soon as it falls behind: no
    pause between two pieces may last ``timeout`` seconds, and ``t`` seconds after the
    start, at least ``min_rate · (t - timeout)`` bytes must have come. A client that
    stalls, or trickles a byte at a time, so holds a connection (and what it sent) for
    about ``timeout`` seconds, not forever; one on a slow link still gets through (a
    whole-body deadline would refuse a 64 MiB part on a 1 MB/s link)."""
    start = time.monotonic()
    received = 0
    pieces = body.__aiter__()
    while True:
        due = start + timeout + received / min_rate
        wait = min(timeout, due - time.monotonic())
        try:
            with anyio.fail_after(max(wait, 0.0)):
                piece = await pieces.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeout(
                f"the request body stalled: {received} bytes in {time.monotonic() - start:.0f} s",
                received=received,
            ) from None
        received += len(piece)
        yield piece


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes ``limit`` bytes, whether it
    declares its length or comes chunked, and (408) as soon as it falls behind."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body is larger than {limit} bytes", limit=limit)
    buf = bytearray()
    async for piece in body_stream(request):
        buf += piece
        if len(buf) > limit:
            raise BodyTooLarge(f"request body is larger than {limit} bytes", limit=limit)
    return bytes(buf)


_BOOLS = {"true": True, "1": True, "false": False, "0": False}


def _convert(model: type, values: Iterable[tuple[str, str]], what: str) -> Any:
    """Path or query strings into ``model``: integers only in ASCII digits (``int()``
    would take ``³`` or ``1_000``). A list field takes every value of its repeated
    parameter (``?tag=a&tag=b``), as strings; any other field the last one. Booleans are
    ``true``/``false`` (or ``1``/``0``)."""
    known = _fields(model)
    out: dict[str, Any] = {}
    for key, raw in values:
        f = known.get(key)
        if f is None:
            if what == "query":
                continue  # unknown query parameters are ignored, as HTTP caches add them
            raise InvalidRequest(f"unexpected {what} parameter {key!r}")
        if isinstance(f.type, msgspec.inspect.ListType):
            out.setdefault(key, []).append(raw)
        elif isinstance(f.type, msgspec.inspect.BoolType):
            if raw not in _BOOLS:
                raise InvalidRequest(f"{what} parameter {key!r} must be true or false")
            out[key] = _BOOLS[raw]
        elif _wants_int(f.type) and raw != "":
            if not _INT.fullmatch(raw):
                raise InvalidRequest(f"{what} parameter {key!r} must be a non-negative integer")
            out[key] = int(raw)
        elif raw != "" or not _wants_int(f.type):
            out[key] = raw
    try:
        return msgspec.convert(out, model)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, f"{what} parameter", model) from None


@functools.cache
def _fields(model: type) -> dict[str, Any]:
    """A model's fields by name (inspecting a model cost ~0.7 ms, on every request)."""
    info = msgspec.inspect.type_info(model)
    return {f.name: f for f in info.fields}  # type: ignore[attr-defined]


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
    "b3sum": InvalidDigest,
    "file_id": InvalidDigest,
    "pack": InvalidDigest,
    "uri": InvalidReference,
}
_AT = re.compile(r" - at `(?:key` in `)?(\$[^`]*)`$")
_FIELD = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)(?:\[[^\]]*\])*$")
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
    exc: msgspec.ValidationError | str, what: str, model: type | None = None
) -> ChunkyardError:
    """A msgspec validation error (or its text) as the project's typed error, naming
    the field. A model may name errors of its own fields in a ``field_errors`` class
    variable."""
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


def _decode_body(model: type, raw: bytes, errors_of: type | None = None) -> Any:
    try:
        return msgspec.json.decode(raw or b"{}", type=model)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, "request body", errors_of or model) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


async def decode_body(model: type, raw: bytes) -> Any:
    """``raw`` decoded into ``model``, without holding up other requests.

    msgspec decodes 48 MiB of commit (420,000 files) in 0.4 s, but in one C call that
    holds the GIL throughout: every other request waited that long. A worker thread
    does not help (measured: the same 0.4-0.5 s stall, the GIL is never let go), a
    process pool would send the objects back through pickle (another long C call), and
    a lower limit would split large trees into several versions. So a body larger than
    ``DECODE_AT_ONCE`` whose model names a ``long_list`` field is decoded in two steps:
    the body with that list's items left as raw JSON (one fast pass that also checks
    the syntax of all of it), then the items ``DECODE_SLICE`` at a time with a turn of
    the event loop between slices. The result and every error are the same as one
    decode's; ``scripts/json_stall.py`` measures the stall."""
    field = getattr(model, "long_list", None)
    if len(raw) <= DECODE_AT_ONCE or field is None:
        return _decode_body(model, raw)
    head, item = _split_model(model, field)
    shell = _decode_body(head, raw, errors_of=model)
    raws: list[msgspec.Raw] = getattr(shell, field)
    decoder = msgspec.json.Decoder(list[item])  # type: ignore[valid-type]
    items: list[Any] = []
    try:
        for first in range(0, len(raws), DECODE_SLICE):
            await anyio.lowlevel.checkpoint()
            end = min(first + DECODE_SLICE, len(raws))
            try:
                items += decoder.decode(b"[" + b",".join(raws[first:end]) + b"]")
            except msgspec.ValidationError as exc:  # "$[3]" is "$.files[first + 3]"
                text = re.sub(
                    r"`\$\[(\d+)\]",
                    lambda m, at=first: f"`$.{field}[{at + int(m.group(1))}]",
                    str(exc),
                )
                raise validation_error(text, "request body", model) from None
            raws[first:end] = [None] * (end - first)  # type: ignore[list-item]  # freed as we go
    except BaseException:
        while items:  # half a million objects take tens of ms to free: a slice at a time
            del items[-DECODE_SLICE:]
            await anyio.lowlevel.checkpoint()
        raise
    values = {f: getattr(shell, f) for f in shell.__struct_fields__}
    return model(**{**values, field: items})


@functools.cache
def _split_model(model: type, field: str) -> tuple[type, type]:
    """``model`` with its list ``field`` holding raw JSON items (and the same
    constraints on the list itself), and the type of that list's items."""
    fields: list[tuple] = []
    item: Any = None
    for f in msgspec.structs.fields(model):
        t = f.type
        if f.name == field:
            meta = get_args(t)[1:] if get_origin(t) is Annotated else ()
            (item,) = get_args(get_args(t)[0] if meta else t)
            t = Annotated[(list[msgspec.Raw], *meta)] if meta else list[msgspec.Raw]
        if f.default is not msgspec.NODEFAULT:
            fields.append((f.name, t, f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, t, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, t))
    if item is None:
        raise TypeError(f"{model.__name__} has no list field {field!r}")
    head = msgspec.defstruct(
        model.__name__, fields, forbid_unknown_fields=model.__struct_config__.forbid_unknown_fields
    )
    return head, item


def _endpoint_app(ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def app(request: Request) -> Response:
        repo: Repository = request.app.state.repository
        who = (
            ANYONE if ep.public else await authenticate(repo, request.headers.get("authorization"))
        )
        path = (
            _convert(ep.path_model, request.path_params.items(), "path") if ep.path_model else None
        )
        query = (
            _convert(ep.query_model, request.query_params.multi_items(), "query")
            if ep.query_model
            else None
        )
        body: Any = None
        if ep.body_model is not None and not ep.streams_body:
            limit = ep.body_limit
            if limit is None:
                limit = repo.settings.max_body
            body = await read_body(request, limit)
            if ep.body_model is not Binary:
                body = await decode_body(ep.body_model, body)
        result = await ep.handler(Call(repo, who, request, path, query, body))
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
        if not ep.public:
            op["security"] = [{"bearer": []}]
        ok: dict[str, Any] | None
        if ep.response_model is Empty:
            ok = None
        elif ep.response_model is Binary:
            ok = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
        elif ep.response_model is Text:
            ok = {"text/plain": {"schema": {"type": "string"}}}
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
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a chunkyard token (cy_…), when the gateway runs with auth",
                }
            },
        },
    }


def _error_model() -> type:
    from .models import Error

    return Error
