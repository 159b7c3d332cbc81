"""Alembic environment: always run on a connection handed in by chunkyard."""

from alembic import context

from chunkyard.catalog.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
