"""Domains record their split strategy (``user``, ``leave-one-out``, ``temporal?...``):
how the registry makes their train / valid / test splits from the plugin's data.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every domain registered before this revision used the loader's own user-disjoint
    # splits: "user", whose fingerprints are unchanged.  Plain ADD COLUMN (see 0002).
    op.add_column("domains", sa.Column("split_strategy", sa.String(128), nullable=False,
                                       server_default="user"))


def downgrade() -> None:
    op.drop_column("domains", "split_strategy")
