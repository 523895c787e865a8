"""Alembic migrations for aetrain's schema (``api.db.models``); run by ``aetrain db upgrade``."""
