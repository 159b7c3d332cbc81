"""the store describes itself: pending metadata records, removals, alias moves by number

Revision ID: 0006
Revises: 0005

- ``meta_pending``: one row per metadata record a transaction made due (FORMAT.md,
  "Metadata objects"), deleted once the record is in the store. Every version, every
  version with tags and every alias move of the catalog as it stands is noted now, so
  the gateways' sweep describes an existing catalog in the store.
- ``removals``: versions ``first .. last`` of an artifact removed (``rm``): the next
  version number stays above them.
- ``alias_moves.number``: the number of the version a move points at (NULL: a
  removal), so the history keeps naming versions that were removed since (their
  ``version_id`` is then cleared).
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "removals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("artifact_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=False),
        sa.Column("first", sa.Integer, nullable=False),
        sa.Column("last", sa.Integer, nullable=False),
        sa.Column("removed_at", sa.Float, nullable=False),
        sa.Column("removed_by", sa.String(16), nullable=True),
    )
    op.create_index("ix_removals_artifact", "removals", ["artifact_id", "last"])
    op.create_table(
        "meta_pending",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("artifact_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sqlite_autoincrement=True,  # ids never taken twice: notes are dropped by id later
    )
    op.create_index("ix_meta_pending_artifact", "meta_pending", ["artifact_id"])
    op.add_column("alias_moves", sa.Column("number", sa.Integer, nullable=True))
    bind.execute(
        sa.text(
            "UPDATE alias_moves SET number = (SELECT number FROM versions"
            " WHERE versions.id = alias_moves.version_id) WHERE version_id IS NOT NULL"
        )
    )
    now = {"now": time.time()}
    bind.execute(
        sa.text(
            "INSERT INTO meta_pending (artifact_id, kind, ref, created_at)"
            " SELECT artifact_id, 'version', id, :now FROM versions ORDER BY id"
        ),
        now,
    )
    bind.execute(
        sa.text(
            "INSERT INTO meta_pending (artifact_id, kind, ref, created_at)"
            " SELECT artifact_id, 'tags', id, :now FROM versions"
            " WHERE EXISTS (SELECT 1 FROM tags WHERE tags.version_id = versions.id) ORDER BY id"
        ),
        now,
    )
    bind.execute(
        sa.text(
            "INSERT INTO meta_pending (artifact_id, kind, ref, created_at)"
            " SELECT artifact_id, 'alias', id, :now FROM alias_moves ORDER BY id"
        ),
        now,
    )


def downgrade() -> None:
    op.drop_column("alias_moves", "number")
    op.drop_index("ix_meta_pending_artifact", table_name="meta_pending")
    op.drop_table("meta_pending")
    op.drop_index("ix_removals_artifact", table_name="removals")
    op.drop_table("removals")
