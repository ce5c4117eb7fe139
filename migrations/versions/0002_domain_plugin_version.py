"""Domains record the version of the plugin that loaded their data, and the data they
had before each ``xreg add-domain NAME --refresh``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Domains registered before this revision have no recorded plugin version (NULL)
    # and no earlier data versions.  Plain ADD COLUMN, not a batch copy of the table:
    # SQLite can add a column in place, while copying ``domains`` would break the
    # foreign keys of every adapter and composition that already points at it.
    op.add_column("domains", sa.Column("plugin_version", sa.String(64), nullable=True))
    op.add_column("domains", sa.Column("data_history", sa.JSON, nullable=False,
                                       server_default=sa.text("'[]'")))


def downgrade() -> None:
    op.drop_column("domains", "data_history")
    op.drop_column("domains", "plugin_version")
