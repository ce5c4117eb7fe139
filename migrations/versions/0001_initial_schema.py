"""Initial schema: base models, domains, adapter versions, compositions with their
sources, candidate sets, evaluation results and tags.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _created() -> sa.Column:
    return sa.Column("created", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "base_models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(512), nullable=False, unique=True),
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column("model_type", sa.String(64), nullable=False),
        sa.Column("hidden_size", sa.Integer, nullable=False),
        sa.Column("num_layers", sa.Integer, nullable=False),
        _created(),
    )
    op.create_table(
        "domains",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("plugin", sa.String(128), nullable=False),
        sa.Column("data_location", sa.Text, nullable=False),
        sa.Column("data_fingerprint", sa.String(64), nullable=False),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        _created(),
    )
    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("domain_id", sa.Integer, sa.ForeignKey("domains.id"), nullable=False),
        sa.Column("base_model_id", sa.Integer, sa.ForeignKey("base_models.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("lora_config", sa.JSON, nullable=False),
        sa.Column("artifact_digest", sa.String(64), nullable=False),
        sa.Column("trainable_parameters", sa.Integer, nullable=False),
        sa.Column("data_fingerprint", sa.String(64), nullable=False),
        sa.Column("training_config", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _created(),
        sa.UniqueConstraint("domain_id", "version"),
    )
    op.create_table(
        "compositions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("target_domain_id", sa.Integer, sa.ForeignKey("domains.id"), nullable=False),
        sa.Column("integrator_config", sa.JSON, nullable=False),
        sa.Column("training_config", sa.JSON, nullable=False),
        sa.Column("artifact_digest", sa.String(64), nullable=False),
        sa.Column("trainable_parameters", sa.Integer, nullable=False),
        sa.Column("data_fingerprint", sa.String(64), nullable=False),
        _created(),
    )
    op.create_table(
        "composition_sources",
        sa.Column("composition_id", sa.Integer, sa.ForeignKey("compositions.id"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("adapter_version_id", sa.Integer, sa.ForeignKey("adapter_versions.id"),
                  nullable=False),
    )
    op.create_table(
        "candidate_sets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("data_fingerprint", sa.String(64), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("protocol", sa.String(32), nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("artifact_digest", sa.String(64), nullable=False),
        _created(),
        sa.UniqueConstraint("data_fingerprint", "split", "protocol", "seed"),
    )
    op.create_table(
        "evaluation_results",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject_kind", sa.String(16), nullable=False),
        sa.Column("subject_name", sa.String(128), nullable=False),
        sa.Column("adapter_version_id", sa.Integer, sa.ForeignKey("adapter_versions.id")),
        sa.Column("composition_id", sa.Integer, sa.ForeignKey("compositions.id")),
        sa.Column("domain_id", sa.Integer, sa.ForeignKey("domains.id"), nullable=False),
        sa.Column("protocol", sa.String(32), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("num_users", sa.Integer, nullable=False),
        sa.Column("data_fingerprint", sa.String(64), nullable=False),
        sa.Column("candidates_digest", sa.String(64)),
        _created(),
    )
    op.create_table(
        "tags",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("entity_kind", sa.String(16), nullable=False),
        sa.Column("entity_id", sa.Integer, nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.UniqueConstraint("entity_kind", "entity_id", "key"),
    )


def downgrade() -> None:
    for table in ("tags", "evaluation_results", "candidate_sets", "composition_sources",
                  "compositions", "adapter_versions", "domains", "base_models"):
        op.drop_table(table)
