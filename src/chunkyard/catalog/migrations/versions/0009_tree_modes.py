"""trees like rsync: file modes and empty directories

Revision ID: 0009
Revises: 0008

- ``version_files.mode``: a tree file's permission bits (``st_mode & 0o777``) as its
  push recorded them. NULL for every existing row: versions made before modes were
  recorded pull as they always did (FORMAT.md, "Digests": such a file hashes as one of
  mode 0644, so their digests stand).
- ``versions.dirs``: a tree's empty directories, a JSON array of paths. NULL for every
  existing row (none recorded).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("version_files", sa.Column("mode", sa.SmallInteger, nullable=True))
    op.add_column("versions", sa.Column("dirs", sa.Text, nullable=True))


def downgrade() -> None:
    # SQLite (>= 3.35) drops a column in place; a batch copy of ``versions`` would fail
    # its foreign keys (version_files, tags and aliases point at it)
    for table, column in (("versions", "dirs"), ("version_files", "mode")):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        else:
            op.drop_column(table, column)
