"""The catalog's tables (SQLAlchemy Core), portable between SQLite and PostgreSQL.

Facts and who writes them:
- ``packs``: one row per pack object; ``state`` goes ``uploading`` → ``verified``
  (the gateway read it back and checked every chunk id). Only verified packs feed
  the dedup index.
- ``pack_entries``: the index of every verified pack (a copy of its footer), used to
  build reconstructions without touching the store.
- ``chunks``: the dedup index, chunk id → one verified location.
- ``artifacts`` / ``versions`` / ``version_files`` / ``tags`` / ``aliases``: names.
- ``sessions``: uploads in progress, so a push can resume.
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
)

metadata = MetaData()

packs = Table(
    "packs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("chunk_count", Integer, nullable=False, default=0),
    # uploading | complete | verified | corrupt; reference objects: indexing | reference
    # | drifted
    Column("state", String(16), nullable=False),
    Column("session_id", String(32), nullable=True),
    Column("upload_id", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("verified_at", Float, nullable=True),
    Index("ix_packs_state", "state"),
)

pack_entries = Table(
    "pack_entries",
    metadata,
    Column("pack_id", String(64), ForeignKey("packs.id"), primary_key=True),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("chunk_id", LargeBinary(32), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("stored_len", Integer, nullable=False),
    Column("raw_len", Integer, nullable=False),
    Column("scheme", SmallInteger, nullable=False),
)

chunks = Table(
    "chunks",
    metadata,
    Column("id", LargeBinary(32), primary_key=True),
    Column("pack_id", String(64), ForeignKey("packs.id"), nullable=False),
    Column("idx", Integer, nullable=False),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False, unique=True),
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
    UniqueConstraint("artifact_id", "number", name="uq_versions_artifact_number"),
)

version_files = Table(
    "version_files",
    metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("path", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("digest", String(64), nullable=False),  # "" for an unhashed reference
    Column("manifest", Text, nullable=False),  # "[]" for a reference file
    Column("ref_object", String(64), nullable=True),  # ref_objects.id (references)
)

tags = Table(
    "tags",
    metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)

aliases = Table(
    "aliases",
    metadata,
    Column("artifact_id", Integer, ForeignKey("artifacts.id"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("updated_at", Float, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("artifact_name", String(256), nullable=False),
    Column("state", String(16), nullable=False),  # open | committed
    Column("version_id", Integer, nullable=True),  # set on commit: retries answer it
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
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
    Column("digest", String(64), nullable=False),  # "" until hashed
    Column("state", String(16), nullable=False),  # pinned | drifted
    Column("created_at", Float, nullable=False),
    Column("checked_at", Float, nullable=True),
)
