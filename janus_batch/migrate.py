"""Run the Alembic migrations programmatically (`janus-batch db upgrade`)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations

log = logging.getLogger(__name__)


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at the packaged `migrations/` folder and a URL."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema at `database_url` up to `revision`."""
    log.info("migrating database to %s", revision)
    command.upgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str | None:
    """The schema revision the database is at, or None if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    from janus_batch.db import get_engine

    with get_engine(database_url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
