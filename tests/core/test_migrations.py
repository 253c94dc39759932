"""The schema comes only from the Alembic migrations and matches the SQLAlchemy models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from janus_batch.db import get_engine
from janus_batch.migrate import current_revision, upgrade
from janus_batch.models import Base


def test_upgrade_creates_tables_and_is_idempotent(database_url: str) -> None:
    assert current_revision(database_url) == "0007"
    upgrade(database_url)  # a second run is a no-op
    names = set(inspect(get_engine(database_url)).get_table_names())
    assert {"jobs", "items", "api_keys", "files", "alembic_version"} <= names


def test_models_match_migrations(database_url: str) -> None:
    with get_engine(database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
