"""Compositions are stored in the shape of adapter versions: what training measured
(validation metrics, best epoch, train users, seconds) moves out of ``training_config``
into a new ``metrics`` column, where adapter versions have always kept it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The keys a composition's training_config held before this revision that are
# measurements of the run, not settings of it.
MEASURED = ("validation", "best_epoch", "train_users", "seconds", "sequences_per_second")

compositions = sa.table("compositions", sa.column("id", sa.Integer),
                        sa.column("training_config", sa.JSON), sa.column("metrics", sa.JSON))


def _move_measurements(forward: bool) -> None:
    """Move the measured keys of every composition from training_config to metrics
    (``forward``) or back."""
    connection = op.get_bind()
    for row_id, training, metrics in connection.execute(
            sa.select(compositions.c.id, compositions.c.training_config, compositions.c.metrics)):
        training = _as_dict(training)
        metrics = _as_dict(metrics)
        if forward:
            metrics.update({key: training.pop(key) for key in MEASURED if key in training})
        else:
            training.update({key: metrics.pop(key) for key in MEASURED if key in metrics})
        connection.execute(sa.update(compositions).where(compositions.c.id == row_id)
                           .values(training_config=training, metrics=metrics))


def _as_dict(value) -> dict:
    if isinstance(value, str):  # a driver that hands JSON back as text
        value = json.loads(value)
    return dict(value or {})


def upgrade() -> None:
    # Plain ADD COLUMN (see 0002): copying the table would break the foreign keys of the
    # composition sources and evaluation results that point at it.
    op.add_column("compositions", sa.Column("metrics", sa.JSON, nullable=False,
                                            server_default=sa.text("'{}'")))
    _move_measurements(forward=True)


def downgrade() -> None:
    _move_measurements(forward=False)
    op.drop_column("compositions", "metrics")
