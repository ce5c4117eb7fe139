"""Alembic environment: runs the revisions against the engine xreg hands over.

The version table is the project's own (``xreg_schema_version``), so the registry can
share a database with other Alembic-managed applications.
"""

from alembic import context

from xcross_registry import schema
from xcross_registry.database import make_engine

config = context.config
engine = config.attributes.get("engine") or make_engine(config.get_main_option("sqlalchemy.url"))

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=schema.Base.metadata,
        version_table=schema.VERSION_TABLE,
        render_as_batch=True,  # SQLite can only ALTER tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
