"""The HTTP API's typed models: every path parameter, query and body is decoded into
one of these at the server boundary, and the OpenAPI document is generated from them.

Why msgspec (not pydantic): it validates while it decodes, in C, with no intermediate
dict, so a commit of a million files is one pass over the body (about ten times faster
than ``json.loads`` alone, with far less memory); its constraints (``Meta``) become the
JSON Schema of the document as they are; and a type mismatch fails fast at any depth,
so JSON nested thousands deep is a 400 after a few bytes, not a recursion.

Integers are bounded to 64 bits everywhere (the catalog's columns); names, aliases,
tags and digests carry the patterns the service also enforces (``chunkyard.names``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta, Struct

from .. import names
from ..errors import ChunkyardError, InvalidManifest
from ..repository import small, uploads

MAX_INT = 2**63 - 1
Int = Annotated[int, Meta(ge=0, le=MAX_INT)]
PositiveInt = Annotated[int, Meta(ge=1, le=MAX_INT)]
Hex64 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$", description="BLAKE3-256, hex")]
SessionId = Annotated[str, Meta(pattern="^[0-9a-f]{1,64}$")]
Name = Annotated[
    str,
    Meta(
        pattern=names.NAME_PATTERN,
        max_length=names.MAX_NAME,
        description="artifact name, e.g. team/project/model",
    ),
]
Alias = Annotated[str, Meta(pattern=names.ALIAS_PATTERN, description="alias, not 'latest'")]
VersionRef = Annotated[
    str,
    Meta(
        pattern=names.VERSION_REF_PATTERN,
        description="a version number, 'latest', or an alias",
    ),
]
TagKey = Annotated[str, Meta(pattern=names.TAG_KEY_PATTERN)]
TagValue = Annotated[str, Meta(pattern=names.TAG_VALUE_PATTERN, max_length=names.MAX_TAG_VALUE)]
Tags = Annotated[dict[TagKey, TagValue], Meta(max_length=names.MAX_TAGS)]
FilePath = Annotated[str, Meta(min_length=1, max_length=names.MAX_PATH)]
#: a tree file's permission bits (``st_mode & 0o777``); absent: 0o644 (FORMAT.md, "Push")
Mode = Annotated[int, Meta(ge=0, le=0o777, description="permission bits, 0 to 0o777")]
Limit = Annotated[int, Meta(ge=1, le=1000)]
#: tags a listing may filter on, and the longest value a filter may name: a request
#: target is at most 64 KiB (the gateway's HTTP parser), and a character can take 12
#: (4 bytes of UTF-8, percent-encoded), so 8 filters of 512 characters stay below it
MAX_TAG_FILTERS = 8
MAX_FILTER_VALUE = 512
#: a tag a version must carry, ``KEY=VALUE`` (the key holds no ``=``)
TagFilter = Annotated[
    str,
    Meta(
        pattern=f"^{names.TAG_KEY_PATTERN[1:-1]}=[^{names.UNSAFE_CHARS}]{{0,{MAX_FILTER_VALUE}}}$",
        max_length=128 + 1 + MAX_FILTER_VALUE,
        description="KEY=VALUE",
    ),
]
#: where a listing of versions across artifacts goes on: ``NAME@NUMBER``, or "" to start
VersionCursor = Annotated[
    str,
    Meta(
        pattern=f"^({names.NAME_PATTERN[1:-1]}@[0-9]{{1,18}})?$",
        max_length=names.MAX_NAME + 19,
        description="the next of the previous page (NAME@VERSION), or empty",
    ),
]


class Model(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Unknown fields are refused: a misspelt option is an error, not a silent no-op."""


# -- path parameters ---------------------------------------------------------------
class SessionPath(Model):
    sid: SessionId


class PackPath(Model):
    sid: SessionId
    pack: Hex64


class NamePath(Model):
    name: Name


class VersionPath(Model):
    name: Name
    ref: VersionRef


class VersionNumberPath(Model):
    """A version by number only (removing one: never by alias or ``latest``)."""

    name: Name
    ref: PositiveInt


class FileIndexPath(Model):
    name: Name
    ref: VersionRef
    index: Int


class AliasPath(Model):
    name: Name
    alias: Alias


class BlobPath(Model):
    key: Annotated[
        str,
        Meta(
            pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*){0,15}$",
            max_length=1024,
            description="an object key of the local store, such as packs/ab/<pack id>",
        ),
    ]


# -- queries -------------------------------------------------------------------------
class ListArtifactsQuery(Model):
    prefix: Annotated[str, Meta(max_length=names.MAX_NAME)] = ""
    cursor: Annotated[str, Meta(max_length=names.MAX_NAME)] = ""
    limit: Limit = 100


class PageQuery(Model):
    cursor: Int = 0
    limit: Limit = 100


class FindVersionsQuery(Model):
    """``?prefix=team/&tag=branch=main&tag=purpose=ab-test``: a repeated ``tag`` is one
    more tag every version listed carries."""

    prefix: Annotated[str, Meta(max_length=names.MAX_NAME)] = ""
    tag: Annotated[list[TagFilter], Meta(max_length=MAX_TAG_FILTERS)] = []
    cursor: VersionCursor = ""
    limit: Limit = 100


class AliasesQuery(Model):
    cursor: Annotated[str, Meta(max_length=64)] = ""
    limit: Limit = 100


class RemoveAliasQuery(Model):
    expect: PositiveInt | None = None


class RemoveQuery(Model):
    """``force=1``: also remove the aliases that point at what is removed; ``yes=1``:
    remove every version of an artifact that has more than one."""

    force: Annotated[int, Meta(ge=0, le=1)] = 0
    yes: Annotated[int, Meta(ge=0, le=1)] = 0


class SourcesQuery(Model):
    cursor: Int = 0
    limit: Limit = 1000


class LocalQuery(Model):
    #: the client runs on the gateway's machine: name pack files it may read itself (a
    #: query parameter, which gateways before it ignore, not a body field they refuse)
    local: bool = False


class RangeQuery(LocalQuery):
    start: Int = 0
    length: Int | None = None


class ContentQuery(Model):
    path: FilePath | None = None


class BlobPutQuery(Model):
    """A signed part upload (local store): every field is covered by ``sig``."""

    upload: Annotated[str, Meta(pattern="^[0-9a-f]{32}$")]
    part: Annotated[int, Meta(ge=1, le=10_000)]
    size: Annotated[int, Meta(ge=0, le=2**32)]
    exp: Int
    sig: Annotated[str, Meta(max_length=128)]
    b3: Annotated[str, Meta(max_length=64)] | None = None


class BlobGetQuery(Model):
    exp: Int
    sig: Annotated[str, Meta(max_length=128)]
    etag: Annotated[str, Meta(max_length=256)] | None = None
    range: Annotated[str, Meta(pattern="^[0-9]{1,18}-[0-9]{1,18}$")] | None = None


# -- request bodies ------------------------------------------------------------------
class CreateSession(Model):
    name: Name


class BeginPack(Model):
    pack: Hex64
    size: Annotated[int, Meta(ge=48, le=64 * 1024 * 1024)]
    checksums: (
        Annotated[list[Annotated[str, Meta(max_length=100)]], Meta(max_length=10_000)] | None
    ) = None


class Part(Model):
    number: Annotated[int, Meta(ge=1, le=10_000)]
    etag: Annotated[str, Meta(max_length=1024)] = ""
    checksum: Annotated[str, Meta(max_length=128)] = ""


class CompletePack(Model):
    parts: Annotated[list[Part], Meta(max_length=10_000)] = []


#: ``[pack id, first chunk, end chunk, proof]``: chunks ``first .. end-1`` of a pack, and
#: BLAKE3 keyed with the session's proof key over their chunk keys
TermRef = tuple[Hex64, Int, Int, Hex64]


class CommitFile(Model):
    path: FilePath
    size: Int
    b3sum: Annotated[
        str, Meta(pattern="^([0-9a-f]{64})?$", description="BLAKE3 of the content, if known")
    ] = ""
    terms: Annotated[list[TermRef], Meta(max_length=10_000_000)] = []
    from_version: PositiveInt | None = None
    file_id: Hex64 | None = None
    mode: Mode | None = None


class Commit(Model):
    field_errors: ClassVar[dict[str, type[ChunkyardError]]] = {
        f: InvalidManifest
        for f in ("layout", "files", "terms", "size", "from_version", "mode", "dirs")
    }
    #: a large body's files are decoded a slice at a time (``routing.decode_body``)
    long_list: ClassVar[str] = "files"

    layout: Literal["file", "tree"]
    files: Annotated[list[CommitFile], Meta(max_length=1_000_000)]
    tags: Tags = {}
    #: a new version even when the content equals the latest's (imports and copies: one
    #: version per run or per source version, each with its own tags)
    always_new: bool = False
    #: a tree's empty directories (the deepest ones only)
    dirs: Annotated[list[FilePath], Meta(max_length=uploads.MAX_DIRS)] = []


class SmallFile(Model):
    path: FilePath
    data: Annotated[bytes, Meta(description="the file's bytes, base64")]
    mode: Mode | None = None


class SmallPush(Model):
    field_errors: ClassVar[dict[str, type[ChunkyardError]]] = {
        f: InvalidManifest for f in ("layout", "files", "path", "data", "mode", "dirs")
    }

    layout: Literal["file", "tree"]
    files: Annotated[list[SmallFile], Meta(max_length=small.MAX_FILES)]
    tags: Tags = {}
    dirs: Annotated[list[FilePath], Meta(max_length=small.MAX_DIRS)] = []


class SetTags(Model):
    tags: Tags


class SetAlias(Model):
    version: PositiveInt
    expect: Int | None = None


class Reconstructions(Model):
    files: Annotated[list[Int], Meta(min_length=1, max_length=1024)]


class Register(Model):
    name: Name
    uri: Annotated[str, Meta(min_length=1, max_length=8192)]
    hash: bool = False
    index: bool = False
    tags: Tags = {}


# -- responses (documentation and the schema fuzzer's checks) --------------------------
class ErrorBody(Struct):
    code: str
    message: str
    detail: dict[str, Any] | None = None


class Error(Struct):
    error: ErrorBody


class CreateToken(Model):
    scopes: Annotated[list[Annotated[str, Meta(max_length=300)]], Meta(min_length=1, max_length=64)]
    ttl: Annotated[float, Meta(gt=0, le=100 * 365 * 86400)] | None = None
    label: Annotated[str, Meta(max_length=200, pattern=names.TAG_VALUE_PATTERN)] | None = None


class TokenPath(Model):
    id: Annotated[str, Meta(pattern="^[0-9a-f]{12}$")]


class Token(Struct):
    id: str
    scopes: list[str]
    label: str | None
    created_at: float
    created_by: str | None
    expires_at: float | None
    revoked_at: float | None
    token: str | None = None


class Tokens(Struct):
    tokens: list[Token]


class Revoked(Struct):
    id: str
    revoked: bool


class CollectGarbage(Model):
    """``POST /v1/admin/gc``: seconds a pack is kept after it was verified, whatever
    names it; ``dry_run`` only says what would go; ``delete_orphans`` also deletes
    objects under ``packs/`` no catalog row names (never right after losing a catalog)."""

    grace: Annotated[float, Meta(ge=0, le=100 * 365 * 86400)] = 24 * 3600.0
    dry_run: bool = False
    delete_orphans: bool = False


class GarbageReport(Struct):
    dry_run: bool
    grace: float
    versions: int
    files: int
    packs_scanned: int
    packs_live: int
    packs_kept: int
    packs_deleted: int
    bytes_freed: int
    sessions_expired: int
    uploads_aborted: int
    upload_objects_deleted: int
    tombstones_removed: int
    objects_listed: int
    store_lists_uploads: bool
    orphan_uploads_aborted: int
    orphan_objects: int
    orphan_bytes: int
    orphans_deleted: int
    errors: list[str]
    seconds: float


class Health(Struct):
    status: str
    catalog: str


class Ready(Struct):
    status: str  # ready | not ready
    catalog: str  # ok, or why not
    store: str


class Session(Struct):
    session: str
    name: str
    expires_at: float
    proof_key: str
    part_checksum: str | None
    sequential_parts: bool
    pack_target_size: int
    pack_part_size: int
    pack_max_size: int
    query_batch: int


class Missing(Struct):
    packs: list[str]
    #: ``[pack index, chunk index]`` per id asked, or null (a pair as an array of two
    #: rather than a tuple: schemathesis rejects ``prefixItems`` inside ``anyOf``)
    locations: list[Annotated[list[int], Meta(min_length=2, max_length=2)] | None]


class Request(Struct):
    method: str
    url: str
    headers: dict[str, str]


class PresignedPart(Struct):
    number: int
    offset: int
    size: int
    method: str | None = None
    url: str | None = None
    headers: dict[str, str] | None = None
    #: the store holds this part already (an upload begun before): send nothing, and
    #: complete the pack with this ETag
    stored: bool | None = None
    etag: str | None = None


class PackPlan(Struct):
    pack: str
    state: Literal["need_checksums", "uploading", "complete", "verified"]
    parts: list[PresignedPart]
    checksum: str | None = None
    sequential: bool | None = None
    expires_in: int | None = None


class PackState(Struct):
    pack: str
    state: str
    chunks: int


class VersionSummary(Struct):
    name: str
    version: int
    kind: Literal["stored", "reference"]
    layout: Literal["file", "tree"]
    digest: str
    size: int
    files: int
    created_at: float
    digest_of: Literal["content", "pins"]
    format: int
    tags: dict[str, str]
    aliases: list[str]
    source: str | None = None
    file_list: list[dict[str, Any]] | None = None
    #: with ``file_list``, a tree's empty directories
    dirs: list[str] | None = None
    created: bool | None = None


class SmallPushResult(VersionSummary):
    chunks_total: int = 0
    chunks_new: int = 0
    bytes_uploaded: int = 0


class Removed(Struct):
    name: str
    removed: list[int]  # the version numbers removed now
    aliases: list[str]  # aliases removed with them (force)
    already: list[int]  # asked for, but removed before: nothing changed for them


class ArtifactItem(Struct):
    name: str
    latest: int
    versions: int


class ArtifactsPage(Struct):
    artifacts: list[ArtifactItem]
    next: str | None


class VersionsPage(Struct):
    versions: list[VersionSummary]
    next: int | None


class VersionsFound(Struct):
    versions: list[VersionSummary]
    next: str | None


class AliasMoved(Struct):
    name: str
    alias: str
    version: int
    previous: int | None


class AliasRemoved(Struct):
    name: str
    alias: str
    previous: int


class AliasItem(Struct):
    alias: str
    version: int
    updated_at: float


class AliasTarget(Struct):
    name: str
    alias: str
    version: int
    updated_at: float


class AliasesPage(Struct):
    name: str
    aliases: list[AliasItem]
    next: str | None


class AliasMove(Struct):
    id: int
    version: int | None  # None: removed
    previous: int | None  # None: did not exist
    moved_at: float
    moved_by: str | None  # the token id; None: a gateway without auth


class AliasHistory(Struct):
    name: str
    alias: str
    moves: list[AliasMove]
    next: int | None


class Get(Struct):
    """A GET the client sends as it is (headers included: a signed ``Range``)."""

    method: str
    url: str
    headers: dict[str, str]
    reference: str | None = None  # chunks of an indexed reference object: its URI
    #: the pack's file, for a client that asked ``local`` from this machine: read there
    #: if it can, else send the GET
    file: str | None = None


class Term(Struct):
    pack: str
    range: tuple[int, int]
    chunks: list[tuple[str, int, int, int]]
    skip: int
    take: int
    url: Get | None = None  # single files: the GET of this term's bytes
    read: int | None = None  # batches: the index of the read that holds them


class Reconstruction(Struct):
    name: str
    version: int
    index: int
    path: str
    size: int
    digest: str
    b3sum: str
    start: int
    end: int
    next: int | None
    terms: list[Term]
    reference: dict[str, Any] | None = None


class BatchFile(Struct):
    index: int
    path: str
    size: int
    digest: str
    b3sum: str
    terms: list[Term]


class Read(Struct):
    pack: str
    range: tuple[int, int]
    url: Get


class BatchReconstruction(Struct):
    name: str
    version: int
    files: list[BatchFile]
    reads: list[Read]


class Stats(Struct):
    artifacts: int
    versions: int
    logical_bytes: int
    stored_bytes: int
    referenced_bytes: int
    chunks: int
    packs: int
    dedup_ratio: float | None


class VerifyReport(Struct):
    name: str
    version: int
    kind: str
    source: str | None
    ok: bool
    checked: int
    drifted: int
    objects: list[dict[str, Any]]


class SourcesPage(Struct):
    name: str
    version: int
    files: list[dict[str, Any]]
    next: int | None


def decode(model: type[Any], raw: bytes) -> Any:
    """A JSON body into ``model``; ``msgspec`` errors name the offending field."""
    return msgspec.json.decode(raw, type=model)
