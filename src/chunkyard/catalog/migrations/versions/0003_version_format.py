"""versions record the repository format they were written under

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # every version written so far was written under format 2 (FORMAT.md, version log)
    op.add_column(
        "versions", sa.Column("format", sa.SmallInteger, nullable=False, server_default="2")
    )


def downgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("format")
