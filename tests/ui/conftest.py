"""Fixtures for the dashboard: a TestClient on the test database (SQLite and PostgreSQL) and
the local results folder jobs are written into."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from janus_batch.settings import Settings, get_settings


@pytest.fixture
def client(settings_env: Settings) -> Iterator[TestClient]:
    """A client of a fresh app in open mode (owner = local)."""
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def storage_root(settings_env: Settings) -> Path:
    """The local storage folder of the test settings."""
    assert settings_env.storage_url
    return Path(settings_env.storage_url)


@pytest.fixture
def set_env(monkeypatch: pytest.MonkeyPatch, settings_env: Settings) -> Callable[..., Settings]:
    """Change JANUS_BATCH_* variables for the rest of the test: set_env(auth_mode="keys")."""

    def apply(**values: str) -> Settings:
        for name, value in values.items():
            monkeypatch.setenv(f"JANUS_BATCH_{name.upper()}", value)
        get_settings.cache_clear()
        return get_settings()

    return apply
