"""Trained baselines (an ID-based SASRec, ...) are stored models of their own kind: a
``baseline_models`` row per trained version, with its artifact, training settings and
run, validation metrics and the data fingerprint, numbered per (domain, kind).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A new table only: no existing row changes, so registries of every earlier
    # revision upgrade in place.
    op.create_table(
        "baseline_models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("domain_id", sa.Integer, sa.ForeignKey("domains.id"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("artifact_digest", sa.String(64), nullable=False),
        sa.Column("trainable_parameters", sa.Integer, nullable=False),
        sa.Column("data_fingerprint", sa.String(64), nullable=False),
        sa.Column("training_config", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("domain_id", "kind", "version"),
    )


def downgrade() -> None:
    op.drop_table("baseline_models")
