"""Alembic environment of the registry, installed as ``xcross_registry.migrations``."""
