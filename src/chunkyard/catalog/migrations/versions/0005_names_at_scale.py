"""names at team scale: versions found by tag through an index, the history of every
alias move, artifact names in byte order on PostgreSQL

Revision ID: 0005
Revises: 0004

- ``ix_tags_key_value`` on ``(key, substr(value, 1, 200), version_id)``: the versions
  that carry a tag, without reading the table. On the value's first 200 characters, not
  the whole value: a B-tree entry on PostgreSQL is at most 2,704 bytes, and a value may
  be 4,096 characters (16 KiB of UTF-8).
- ``alias_moves``: one row per move or removal of an alias, written with it. Each alias
  that exists now gets one row, the move to its current version at its ``updated_at``
  (what it pointed at before is not known: NULL, as for a new alias; by: NULL).
- PostgreSQL: ``artifacts.name`` in the "C" collation, as SQLite compares: under a
  locale's collation ``name >= 'Team/' AND name < 'Team0'`` also holds for
  ``team/x``, so a prefix listing was not one range of the name index.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: catalog.schema.TAG_INDEXED (copied: a migration must not change when the code does)
TAG_INDEXED = 200


def upgrade() -> None:
    bind = op.get_bind()
    op.create_index(
        "ix_tags_key_value",
        "tags",
        ["key", sa.text(f"substr(value, 1, {TAG_INDEXED})"), "version_id"],
    )
    op.create_table(
        "alias_moves",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("artifact_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=True),
        sa.Column("previous", sa.Integer, nullable=True),
        sa.Column("moved_at", sa.Float, nullable=False),
        sa.Column("moved_by", sa.String(16), nullable=True),
    )
    op.create_index("ix_alias_moves_alias", "alias_moves", ["artifact_id", "alias", "id"])
    bind.execute(
        sa.text(
            "INSERT INTO alias_moves (artifact_id, alias, version_id, previous, moved_at,"
            " moved_by) SELECT artifact_id, name, version_id, NULL, updated_at, NULL"
            " FROM aliases ORDER BY updated_at, artifact_id, name"
        )
    )
    if bind.dialect.name == "postgresql":
        bind.execute(
            sa.text('ALTER TABLE artifacts ALTER COLUMN name TYPE VARCHAR(256) COLLATE "C"')
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.execute(sa.text("ALTER TABLE artifacts ALTER COLUMN name TYPE VARCHAR(256)"))
    op.drop_index("ix_alias_moves_alias", table_name="alias_moves")
    op.drop_table("alias_moves")
    op.drop_index("ix_tags_key_value", table_name="tags")
