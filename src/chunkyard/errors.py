"""One exception tree for the whole project.

    ChunkyardError                 (code, HTTP status)
    ├── InvalidRequest             400  bad_request
    │   ├── InvalidName            400  invalid_name
    │   ├── InvalidDigest          400  invalid_digest
    │   ├── InvalidManifest        400  invalid_manifest
    │   ├── InvalidReference       400  invalid_reference
    │   ├── BodyTooLarge           413  body_too_large
    │   ├── RequestTimeout         408  request_timeout
    │   └── RangeNotSatisfiable    416  range_not_satisfiable
    ├── NotFound                   404  not_found
    │   ├── ArtifactNotFound       404  artifact_not_found
    │   ├── VersionNotFound        404  version_not_found
    │   ├── AliasNotFound          404  alias_not_found
    │   ├── SessionNotFound        404  session_not_found
    │   ├── PackNotFound           404  pack_not_found
    │   └── SourceNotFound         404  source_not_found
    ├── Conflict                   409  conflict
    │   ├── TagConflict            409  tag_conflict
    │   ├── AliasConflict          409  alias_conflict
    │   ├── VersionAliased         409  version_aliased  (``rm`` of what an alias names)
    │   ├── ConfirmRequired        409  confirm_required  (``rm NAME`` of many versions)
    │   ├── PacksGone              409  packs_gone  (garbage collection took packs a commit names)
    │   └── CatalogNotEmpty        409  catalog_not_empty  (``db copy``/``rebuild``)
    ├── PreconditionFailed         412  precondition_failed
    ├── Unauthorized               401  unauthorized
    ├── Forbidden                  403  forbidden
    │   ├── BadSignature           403  bad_signature
    │   ├── UrlExpired             403  url_expired
    │   ├── ReferenceNotAllowed    403  reference_not_allowed
    │   └── AddressForbidden       403  address_forbidden
    ├── IntegrityFailure           422  integrity_failure
    │   ├── PackCorrupt            422  pack_corrupt
    │   ├── DigestMismatch         422  digest_mismatch
    │   ├── UntrustedChunks        422  untrusted_chunks
    │   ├── ReferenceDrifted       422  reference_drifted
    │   ├── CopyMismatch           422  copy_mismatch  (``db copy``: the copy differs)
    │   └── RecordInvalid          422  record_invalid  (a metadata record in the store)
    ├── StoreError                 502  store_error
    │   └── StoreObjectMissing     502  store_object_missing
    ├── CatalogError               503  catalog_error  (this chunkyard cannot use the catalog)
    │   ├── CatalogOutdated        503  catalog_outdated  (run ``chunkyard db upgrade``)
    │   ├── CatalogTooNew          503  catalog_too_new  (upgrade chunkyard)
    │   ├── NotACatalog            503  not_a_catalog
    │   ├── CatalogUnreachable     503  catalog_unreachable
    │   └── CatalogLost            503  catalog_lost  (an empty catalog, a described store)
    └── GatewayUnavailable         503  gateway_unavailable  (client side: cannot reach it)

Foreign errors (botocore, Azure, Google, SQLAlchemy, httpx) are translated at the
boundary with the original chained as ``__cause__``. The HTTP API maps this tree to
JSON ``{"error": {"code", "message", "detail"}}`` in exactly one place
(``server/errors.py``); the client maps it back with :func:`from_json`.
"""

from __future__ import annotations

from typing import Any


class ChunkyardError(Exception):
    code = "error"
    status = 500
    #: the gateway's id of the request that failed (client side), for its logs
    request_id: str | None = None

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail:
            body["detail"] = self.detail
        if self.request_id:
            body["request_id"] = self.request_id
        return {"error": body}


class InvalidRequest(ChunkyardError):
    code, status = "bad_request", 400


class InvalidName(InvalidRequest):
    code = "invalid_name"


class InvalidDigest(InvalidRequest):
    code = "invalid_digest"


class InvalidManifest(InvalidRequest):
    code = "invalid_manifest"


class InvalidReference(InvalidRequest):
    """A reference URI that cannot be registered as given (syntax, nothing to pin)."""

    code = "invalid_reference"


class BodyTooLarge(InvalidRequest):
    code, status = "body_too_large", 413


class RequestTimeout(InvalidRequest):
    """A request body that did not arrive in time (stalled, or trickling below the
    gateway's minimum rate): the gateway stops waiting for it."""

    code, status = "request_timeout", 408


class RangeNotSatisfiable(InvalidRequest):
    code, status = "range_not_satisfiable", 416


class FormatTooNew(InvalidRequest):
    """A version written in a repository format newer than this program reads: it must
    refuse it rather than misread it (an older reader does not know newer schemes)."""

    code = "format_too_new"


class NotFound(ChunkyardError):
    code, status = "not_found", 404


class ArtifactNotFound(NotFound):
    code = "artifact_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class AliasNotFound(NotFound):
    """No such alias (to remove or show); resolving ``name:alias`` stays
    ``version_not_found``, as for any version reference."""

    code = "alias_not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"


class PackNotFound(NotFound):
    code = "pack_not_found"


class SourceNotFound(NotFound):
    """Nothing at the URI a reference names (at registration time)."""

    code = "source_not_found"


class Conflict(ChunkyardError):
    code, status = "conflict", 409


class TagConflict(Conflict):
    code = "tag_conflict"


class AliasConflict(Conflict):
    code = "alias_conflict"


class VersionAliased(Conflict):
    """``rm`` of versions that aliases point at, without ``force``: ``detail.aliases``
    names them."""

    code = "version_aliased"


class ConfirmRequired(Conflict):
    """``rm NAME`` of an artifact with more than one version, without confirmation."""

    code = "confirm_required"


class PacksGone(Conflict):
    """A commit (or a small push) names packs that garbage collection condemned or
    deleted after the session's missing-chunk query found them. Nothing was written;
    the client asks again which chunks are missing and uploads those (``packs`` lists
    the ones gone). Only packs the caller named are said to be gone."""

    code = "packs_gone"


class CatalogNotEmpty(Conflict):
    """``db copy`` (or ``db rebuild``) into a catalog that holds rows already (without
    ``--force``)."""

    code = "catalog_not_empty"


class PreconditionFailed(ChunkyardError):
    """A conditional read whose object changed (a pinned local-store URL)."""

    code, status = "precondition_failed", 412


class Unauthorized(ChunkyardError):
    """No bearer token, or one the gateway does not know (or revoked, or expired)."""

    code, status = "unauthorized", 401


class Forbidden(ChunkyardError):
    code, status = "forbidden", 403


class BadSignature(Forbidden):
    code = "bad_signature"


class UrlExpired(Forbidden):
    code = "url_expired"


class ReferenceNotAllowed(Forbidden):
    """The URI is outside every prefix of CHUNKYARD_REF_ALLOW."""

    code = "reference_not_allowed"


class AddressForbidden(Forbidden):
    """An http(s) source resolves to loopback, private, link-local or metadata space."""

    code = "address_forbidden"


class IntegrityFailure(ChunkyardError):
    code, status = "integrity_failure", 422


class PackCorrupt(IntegrityFailure):
    code = "pack_corrupt"


class DigestMismatch(IntegrityFailure):
    code = "digest_mismatch"


class UntrustedChunks(IntegrityFailure):
    code = "untrusted_chunks"


class ReferenceDrifted(IntegrityFailure):
    """A referenced object no longer matches its pin: changed or gone at the source."""

    code = "reference_drifted"


class CopyMismatch(IntegrityFailure):
    """``db copy`` found the target differing from the source (a row count, a file id or
    a version digest recomputed from the copied rows); nothing was committed."""

    code = "copy_mismatch"


class RecordInvalid(IntegrityFailure):
    """A metadata record in the store that is not what its key says (FORMAT.md,
    "Metadata objects"), or two records that contradict each other."""

    code = "record_invalid"


class StoreError(ChunkyardError):
    code, status = "store_error", 502


class StoreObjectMissing(StoreError):
    code = "store_object_missing"


class CatalogError(ChunkyardError):
    """The catalog's database cannot be used as it is: operators act on these at start
    (``chunkyard`` exits 2 with one line saying what to do)."""

    code, status = "catalog_error", 503


class CatalogOutdated(CatalogError):
    """The catalog's schema is older than this chunkyard's: ``chunkyard db upgrade``.
    A gateway does not upgrade it by itself, since older gateways sharing the catalog
    would then fail in the middle of requests."""

    code = "catalog_outdated"


class CatalogTooNew(CatalogError):
    """The catalog's schema revision is none this chunkyard knows: a newer chunkyard
    upgraded it, so this one must be upgraded too."""

    code = "catalog_too_new"


class NotACatalog(CatalogError):
    """A database with tables but no chunkyard schema revision (or not a database)."""

    code = "not_a_catalog"


class CatalogUnreachable(CatalogError):
    """The catalog's database cannot be opened (no server, no such database or file)."""

    code = "catalog_unreachable"


class CatalogLost(CatalogError):
    """A gateway on an empty catalog over a store that describes versions: it would
    number versions from 1 again. ``chunkyard db rebuild --from-store`` first."""

    code = "catalog_lost"


class GatewayUnavailable(ChunkyardError):
    code, status = "gateway_unavailable", 503


def _all_subclasses(cls: type[ChunkyardError]) -> list[type[ChunkyardError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def from_json(status: int, body: Any) -> ChunkyardError:
    """Rebuild the typed error a gateway sent, so clients can ``except`` precisely."""
    err = body.get("error", {}) if isinstance(body, dict) else {}
    code = err.get("code", "error")
    message = err.get("message") or f"gateway answered HTTP {status}"
    exc: ChunkyardError | None = None
    for cls in _all_subclasses(ChunkyardError):
        if cls.code == code:
            exc = cls(message, **(err.get("detail") or {}))
            break
    if exc is None:
        exc = ChunkyardError(message, **(err.get("detail") or {}))
        exc.code, exc.status = code, status
    rid = err.get("request_id")
    if isinstance(rid, str):
        exc.request_id = rid[:64]
    return exc
