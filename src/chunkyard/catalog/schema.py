"""The catalog's tables (SQLAlchemy Core), portable between SQLite and PostgreSQL.

Facts and who writes them:
- ``uploads``: one row per pack a session is uploading, each to a store key of its own
  (``packs/ab/<pack id>.<upload>``), so that no upload can block or spoil another's;
  ``state`` goes ``uploading`` → ``complete`` (the parts are one object) and the row
  goes once the upload is verified (or stays ``corrupt`` for its session to see).
- ``packs``: one row per pack the gateway has verified (read back, every chunk checked):
  ``key`` is where its live copy is. ``corrupt`` marks one found damaged later.
  Garbage collection turns an unreferenced pack ``condemned`` (``swept_at``: when),
  deletes its object, then leaves the row as a tombstone (``deleted``: no key, no
  index rows) until no session that could have found it is open (FORMAT.md,
  "Deleting").
- ``pack_entries``: the index of every verified pack, with each chunk's id and its key
  (the secret that proves possession), used to build reconstructions and check proofs
  without touching the store.
- ``chunks``: the dedup index per dedup domain, chunk key → one verified location.
- ``artifacts`` / ``versions`` / ``version_files`` / ``tags`` / ``aliases``: names.
  ``alias_moves``: every move of an alias (and removal: ``number`` NULL), written
  in the transaction that moves it, so ``alias history`` is complete.
- ``removals``: versions removed (``rm``), so their numbers are never taken again.
- ``meta_pending``: metadata records a transaction made due and the store does not
  hold yet (FORMAT.md, "Metadata objects"): written after the commit, then deleted.
- ``sessions``: pushes in progress (who, which artifact, the proof key), so a push can
  resume.
- ``tokens``: bearer tokens, by the hash of the secret only; ``catalog_settings``:
  facts fixed when the catalog was made (the dedup domain depth).
- ``ref_objects``: pinned source objects of reference versions (uri, size, ETag,
  version id, last-modified; digest once hashed), keyed by pin id. An *indexed* one
  also has a ``packs`` row under the same id with ``state = 'reference'``, whose
  ``pack_entries`` are its chunks as raw byte ranges of the source object: so the
  missing-chunk query, manifests and reconstructions treat it as one more pack.
  ``state`` turns ``drifted`` when ``verify`` finds the source changed.

This module describes the latest schema; each change also gets an Alembic migration
under ``migrations/versions`` (the migrations, not ``create_all``, build databases).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    literal_column,
)
from sqlalchemy.sql.elements import ColumnElement

metadata = MetaData()

#: characters of a tag value the ``ix_tags_key_value`` index holds: a B-tree entry on
#: PostgreSQL is at most 2,704 bytes and a value may be 4,096 characters, so the index
#: is on this prefix (a value shorter than it is matched by the index alone)
TAG_INDEXED = 200

packs = Table(
    "packs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("chunk_count", Integer, nullable=False, default=0),
    # verified | corrupt | condemned | deleted; reference objects: indexing | reference |
    # drifted
    Column("state", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("verified_at", Float, nullable=True),
    Column("key", Text, nullable=True),  # the store key of the live copy
    # an indexed reference object: the artifact that registered it (who may use it)
    Column("artifact", String(256), nullable=True),
    # garbage collection: when it condemned the pack (kept once it is a tombstone)
    Column("swept_at", Float, nullable=True),
    Index("ix_packs_state", "state"),
)

uploads = Table(
    "uploads",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("session_id", String(64), nullable=False),
    Column("pack_id", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("store_upload_id", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("state", String(16), nullable=False),  # uploading | complete | corrupt
    Column("created_at", Float, nullable=False),
    # the part checksum the store upload was created with (S3 holds a part to it)
    Column("part_checksum", String(16), nullable=True),
    UniqueConstraint("session_id", "pack_id", name="uq_uploads_session_pack"),
    Index("ix_uploads_state", "state"),
)

pack_entries = Table(
    "pack_entries",
    metadata,
    Column("pack_id", String(64), ForeignKey("packs.id"), primary_key=True),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("chunk_id", LargeBinary(32), nullable=False),
    Column("chunk_key", LargeBinary(32), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("stored_len", Integer, nullable=False),
    Column("raw_len", Integer, nullable=False),
    Column("scheme", SmallInteger, nullable=False),
)

chunks = Table(
    "chunks",
    metadata,
    Column("domain", String(256), primary_key=True),
    Column("key", LargeBinary(32), primary_key=True),
    Column("pack_id", String(64), ForeignKey("packs.id"), nullable=False),
    Column("idx", Integer, nullable=False),
    Index("ix_chunks_pack", "pack_id"),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # byte order on PostgreSQL too (as on SQLite): a prefix is then one range of the
    # name index, and listings sort the same on both (a locale's collation would not)
    Column(
        "name",
        String(256).with_variant(String(256, collation="C"), "postgresql"),
        nullable=False,
        unique=True,
    ),
    Column("created_at", Float, nullable=False),
)

versions = Table(
    "versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("artifact_id", Integer, ForeignKey("artifacts.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("kind", String(16), nullable=False),  # stored | reference
    Column("layout", String(8), nullable=False),  # file | tree
    Column("digest", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("file_count", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    # references: the registered URI, and whether ``digest`` is of content or of pins
    Column("source", Text, nullable=True),
    Column("digest_of", String(8), nullable=False, server_default="content"),
    # the repository format (FORMAT.md) the version's manifests and digests follow
    Column("format", SmallInteger, nullable=False, server_default="2"),
    # a tree's empty directories, a JSON array of paths (NULL: none, or not recorded)
    Column("dirs", Text, nullable=True),
    UniqueConstraint("artifact_id", "number", name="uq_versions_artifact_number"),
)

version_files = Table(
    "version_files",
    metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("path", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    # format 3: the file id, computed by the gateway from verified chunks ("" for an
    # unhashed reference); format 2: the uploader's BLAKE3 of the content
    Column("digest", String(64), nullable=False),
    # BLAKE3 of the whole content as the uploader declared it ("" if none)
    Column("b3sum", String(64), nullable=False, server_default=""),
    Column("manifest", Text, nullable=False),  # "[]" for a reference file
    Column("ref_object", String(64), nullable=True),  # ref_objects.id (references)
    # a tree file's permission bits (NULL: not recorded: a file version, a reference,
    # or a version older than modes)
    Column("mode", SmallInteger, nullable=True),
)

tags = Table(
    "tags",
    metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)


def tag_value_prefix(value: ColumnElement[str]) -> ColumnElement[str]:
    """The indexed prefix of a tag value, written with literal bounds: SQLite uses an
    index on an expression only for the very same expression (bound parameters are not)."""
    return func.substr(value, literal_column("1"), literal_column(str(TAG_INDEXED)))


#: versions by tag: ``ls --tag KEY=VALUE`` starts from here (see TAG_INDEXED)
Index("ix_tags_key_value", tags.c.key, tag_value_prefix(tags.c.value), tags.c.version_id)

aliases = Table(
    "aliases",
    metadata,
    Column("artifact_id", Integer, ForeignKey("artifacts.id"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("updated_at", Float, nullable=False),
)

alias_moves = Table(
    "alias_moves",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("artifact_id", Integer, ForeignKey("artifacts.id"), nullable=False),
    Column("alias", String(64), nullable=False),
    # the version it points at since (None: the alias was removed, or the version was)
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=True),
    Column("previous", Integer, nullable=True),  # the version number before; None: none
    Column("moved_at", Float, nullable=False),
    Column("moved_by", String(16), nullable=True),  # the token id (None: no auth)
    Column("number", Integer, nullable=True),  # the version number since; None: removed
    Index("ix_alias_moves_alias", "artifact_id", "alias", "id"),
)

removals = Table(
    "removals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("artifact_id", Integer, ForeignKey("artifacts.id"), nullable=False),
    Column("first", Integer, nullable=False),  # versions first .. last were removed
    Column("last", Integer, nullable=False),
    Column("removed_at", Float, nullable=False),
    Column("removed_by", String(16), nullable=True),
    Index("ix_removals_artifact", "artifact_id", "last"),
)

meta_pending = Table(
    "meta_pending",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("artifact_id", Integer, ForeignKey("artifacts.id"), nullable=False),
    Column("kind", String(16), nullable=False),  # version | tags | alias | removed
    # versions.id (version, tags), alias_moves.id (alias), removals.id (removed)
    Column("ref", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_meta_pending_artifact", "artifact_id"),
    # ids are never taken twice (SQLite would reuse the largest once deleted): a gateway
    # drops the notes it wrote by id, a while after writing them
    sqlite_autoincrement=True,
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("artifact_name", String(256), nullable=False),
    Column("state", String(16), nullable=False),  # open | committed | unchanged
    Column("version_id", Integer, nullable=True),  # set on commit: retries answer it
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("token_id", String(16), nullable=True),  # who opened it (None: no auth)
    Column("proof_key", String(64), nullable=True),  # hex, keys the possession proofs
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(16), primary_key=True),  # public: shown by ``token ls``
    Column("hash", String(64), nullable=False, unique=True),  # SHA-256 of the token
    Column("scopes", Text, nullable=False),  # space-separated
    Column("label", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(16), nullable=True),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)

catalog_settings = Table(
    "catalog_settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

ref_objects = Table(
    "ref_objects",
    metadata,
    Column("id", String(64), primary_key=True),  # pin id (pins.Pin.id)
    Column("uri", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("etag", Text, nullable=False),
    Column("source_version", Text, nullable=True),
    Column("last_modified", String(64), nullable=True),
    Column("weak_etag", Boolean, nullable=False, default=False),
    Column("digest", String(64), nullable=False),  # BLAKE3 of the content, "" until hashed
    Column("file_id", String(64), nullable=False, server_default=""),  # "" until hashed
    Column("state", String(16), nullable=False),  # pinned | drifted
    Column("created_at", Float, nullable=False),
    Column("checked_at", Float, nullable=True),
)
