"""Alembic migrations for aetrain's schema (``api.core.db.models``): ``aetrain db upgrade``."""
