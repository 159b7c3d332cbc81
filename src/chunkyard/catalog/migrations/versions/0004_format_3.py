"""format 3: tokens, chunk keys and ids, per-session uploads, per-domain dedup index,
verified file ids

Revision ID: 0004
Revises: 0003

Versions written before keep format 2 (their digests are their uploaders' BLAKE3 of the
content, now also kept as ``b3sum``). Pack index rows gain the chunk key (format 2
called it the chunk id) and the chunk id becomes the hash of the key, as format 3
defines it; uploads still in progress move to ``uploads``; the dedup index is rebuilt
per dedup domain from the versions that use each chunk.
"""

import json
import os
import uuid

import blake3
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: FORMAT.md, format 3 (copied: a migration must not change when the code does)
CHUNK_ID_CONTEXT = "chunkyard 2026-11-30 chunk id from chunk key"
BATCH = 500


def _insert_ignore(bind, table_name: str, rows: list[dict]) -> None:
    if not rows:
        return
    table = sa.table(table_name, *(sa.column(k) for k in rows[0]))
    if bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    for i in range(0, len(rows), BATCH):
        bind.execute(insert(table).on_conflict_do_nothing(), rows[i : i + BATCH])


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(16), nullable=True),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_table(
        "catalog_settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    depth = int(os.environ.get("CHUNKYARD_DEDUP_DOMAIN_DEPTH", "1") or "1")
    bind.execute(
        sa.text("INSERT INTO catalog_settings (key, value) VALUES ('dedup_domain_depth', :v)"),
        {"v": str(depth)},
    )
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("pack_id", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("store_upload_id", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("session_id", "pack_id", name="uq_uploads_session_pack"),
    )
    op.create_index("ix_uploads_state", "uploads", ["state"])
    op.add_column("sessions", sa.Column("token_id", sa.String(16), nullable=True))
    op.add_column("sessions", sa.Column("proof_key", sa.String(64), nullable=True))
    op.add_column(
        "ref_objects", sa.Column("file_id", sa.String(64), nullable=False, server_default="")
    )
    op.add_column(
        "version_files", sa.Column("b3sum", sa.String(64), nullable=False, server_default="")
    )
    bind.execute(
        sa.text("UPDATE version_files SET b3sum = digest WHERE ref_object IS NULL AND digest != ''")
    )

    # uploads in progress leave ``packs`` for ``uploads``
    pending = bind.execute(
        sa.text(
            "SELECT id, size, session_id, upload_id, state, created_at FROM packs"
            " WHERE state IN ('uploading', 'complete')"
        )
    ).all()
    _insert_ignore(
        bind,
        "uploads",
        [
            {
                "id": uuid.uuid4().hex,
                "session_id": r.session_id or "",
                "pack_id": r.id,
                "size": r.size,
                "store_upload_id": r.upload_id or "",
                "key": f"packs/{r.id[:2]}/{r.id}",
                "state": r.state,
                "created_at": r.created_at,
            }
            for r in pending
        ],
    )
    for i in range(0, len(pending), BATCH):
        ids = [r.id for r in pending[i : i + BATCH]]
        bind.execute(
            sa.text("DELETE FROM pack_entries WHERE pack_id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": ids},
        )
        bind.execute(
            sa.text("DELETE FROM packs WHERE id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": ids},
        )

    op.add_column("packs", sa.Column("key", sa.Text, nullable=True))
    op.add_column("packs", sa.Column("artifact", sa.String(256), nullable=True))
    bind.execute(
        sa.text(
            "UPDATE packs SET key = 'packs/' || substr(id, 1, 2) || '/' || id"
            " WHERE state IN ('verified', 'corrupt')"
        )
    )
    with op.batch_alter_table("packs") as batch:
        batch.drop_column("session_id")
        batch.drop_column("upload_id")

    # pack entries: the stored id was the chunk key; the id is now the key's hash
    op.add_column("pack_entries", sa.Column("chunk_key", sa.LargeBinary(32), nullable=True))
    rows = bind.execute(sa.text("SELECT pack_id, idx, chunk_id FROM pack_entries")).all()
    update = sa.text(
        "UPDATE pack_entries SET chunk_key = :k, chunk_id = :i WHERE pack_id = :p AND idx = :x"
    )
    params = [
        {
            "k": bytes(r.chunk_id),
            "i": blake3.blake3(bytes(r.chunk_id), derive_key_context=CHUNK_ID_CONTEXT).digest(),
            "p": r.pack_id,
            "x": r.idx,
        }
        for r in rows
    ]
    for i in range(0, len(params), BATCH):
        bind.execute(update, params[i : i + BATCH])
    with op.batch_alter_table("pack_entries") as batch:
        batch.alter_column("chunk_key", existing_type=sa.LargeBinary(32), nullable=False)

    # the dedup index, per domain, from the versions that use each chunk
    op.drop_table("chunks")
    op.create_table(
        "chunks",
        sa.Column("domain", sa.String(256), primary_key=True),
        sa.Column("key", sa.LargeBinary(32), primary_key=True),
        sa.Column("pack_id", sa.String(64), sa.ForeignKey("packs.id"), nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
    )
    op.create_index("ix_chunks_pack", "chunks", ["pack_id"])
    usable = {
        r.id: r.state
        for r in bind.execute(
            sa.text("SELECT id, state FROM packs WHERE state IN ('verified', 'reference')")
        )
    }
    files = bind.execute(
        sa.text(
            "SELECT a.name, f.manifest, f.ref_object FROM version_files f"
            " JOIN versions v ON v.id = f.version_id JOIN artifacts a ON a.id = v.artifact_id"
            " ORDER BY v.id"
        )
    ).all()
    wanted: dict[tuple[str, str], set[int] | None] = {}  # (domain, pack) -> idx or all
    for name, manifest, ref_object in files:
        domain = "/".join(name.split("/")[:depth])
        if ref_object and usable.get(ref_object) == "reference":
            wanted[(domain, ref_object)] = None
            bind.execute(
                sa.text("UPDATE packs SET artifact = :a WHERE id = :p AND artifact IS NULL"),
                {"a": name, "p": ref_object},
            )
        for pack, first, end, _size in json.loads(manifest or "[]"):
            if pack in usable:
                have = wanted.setdefault((domain, pack), set())
                if have is not None:
                    have.update(range(first, end))
    for (domain, pack), idxs in wanted.items():
        entries = bind.execute(
            sa.text("SELECT idx, chunk_key FROM pack_entries WHERE pack_id = :p"), {"p": pack}
        ).all()
        _insert_ignore(
            bind,
            "chunks",
            [
                {"domain": domain, "key": bytes(e.chunk_key), "pack_id": pack, "idx": e.idx}
                for e in entries
                if idxs is None or e.idx in idxs
            ],
        )


def downgrade() -> None:
    raise NotImplementedError("format 3 cannot be taken back to format 2")
