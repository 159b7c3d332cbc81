"""garbage collection: when a pack was condemned (and, once its object is gone, when
it became a tombstone)

Revision ID: 0007
Revises: 0005

- ``packs.swept_at``: set when garbage collection condemns a pack (state
  ``condemned``); a pack whose object GC deleted keeps its row as a tombstone (state
  ``deleted``, no key, no index rows), so that a session which found the pack before
  it was condemned is told ``packs_gone`` (and uploads again) rather than
  ``untrusted_chunks``. No existing row changes: no pack was ever condemned before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("packs", sa.Column("swept_at", sa.Float, nullable=True))


def downgrade() -> None:
    # SQLite (>= 3.35) drops a column in place; a batch copy of ``packs`` would fail
    # its foreign keys (pack_entries and chunks point at it)
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE packs DROP COLUMN swept_at")
    else:
        op.drop_column("packs", "swept_at")
