"""reference versions: pinned source objects

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ref_objects",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("etag", sa.Text, nullable=False),
        sa.Column("source_version", sa.Text, nullable=True),
        sa.Column("last_modified", sa.String(64), nullable=True),
        sa.Column("weak_etag", sa.Boolean, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("checked_at", sa.Float, nullable=True),
    )
    # plain ADD COLUMNs: no table rebuild on SQLite
    op.add_column("versions", sa.Column("source", sa.Text, nullable=True))
    op.add_column(
        "versions",
        sa.Column("digest_of", sa.String(8), nullable=False, server_default="content"),
    )
    op.add_column("version_files", sa.Column("ref_object", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("version_files") as batch:
        batch.drop_column("ref_object")
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("digest_of")
        batch.drop_column("source")
    op.drop_table("ref_objects")
