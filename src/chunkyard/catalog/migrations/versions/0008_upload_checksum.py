"""uploads record the part checksum their store upload was created with

Revision ID: 0008
Revises: 0007

- ``uploads.part_checksum``: the kind of part checksum (``crc32c``, ``sha256``,
  ``md5``, ``blake3``; NULL: none) the store was signing when the upload began. S3
  fixes a multipart upload's checksum algorithm when it is created and refuses parts
  of another, so an upload begun under another kind than the store's now (the S3
  default went from SHA-256 to CRC32C) is begun again rather than resumed. Rows of
  uploads in progress keep NULL: their kind is not known, so a resume begins them
  again once (at most one pack's parts each are sent again).
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("uploads", sa.Column("part_checksum", sa.String(16), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE uploads DROP COLUMN part_checksum")
    else:
        op.drop_column("uploads", "part_checksum")
