"""The one database schema (SQLAlchemy 2) shared by the API, the worker and Alembic."""

from api.core.db.models import ApiKey, Base, Tenant
from api.core.db.session import make_engine, make_session_factory

__all__ = ["ApiKey", "Base", "Tenant", "make_engine", "make_session_factory"]
