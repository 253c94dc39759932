"""Shared fixtures: throwaway SQLite/PostgreSQL databases, a private Redis key space, settings.

Database-backed tests take `database_url`, which runs them on both SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import services

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.webhooks"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Janus checkpoint (64x64 images, 16 image tokens), written once per
    session; every test that needs a model uses it (no network)."""
    import torch

    from janus import make_tiny_checkpoint

    torch.set_num_threads(1)
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-janus") / "tiny64", image_size=64)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the machine's Redis (started if it was down)."""
    return services.ensure_redis()


@pytest.fixture
def queue_prefix(redis_url: str) -> Iterator[str]:
    """A private Redis key space for one test; deleted afterwards."""
    prefix = f"jbtest-{uuid.uuid4().hex[:10]}:"
    yield prefix
    services.delete_prefix(redis_url, prefix)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    from janus_batch.db import dispose_engines

    name, url = services.create_pg_database()
    yield url
    dispose_engines()
    services.drop_pg_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file for one test."""
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty database: each test using it runs on SQLite and on PostgreSQL."""
    from janus_batch.migrate import upgrade

    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    upgrade(url)
    return url


@pytest.fixture
def settings_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    queue_prefix: str,
) -> Iterator[object]:
    """Environment for a process of janus-batch on the test database, Redis key space and a
    local results folder; returns the resulting Settings. Override storage by setting
    JANUS_BATCH_STORAGE_URL after requesting it and calling `get_settings.cache_clear()`."""
    from janus_batch.queue import get_celery
    from janus_batch.settings import get_settings

    env = {
        "JANUS_BATCH_DATA_DIR": str(tmp_path / "data"),
        "JANUS_BATCH_DATABASE_URL": database_url,
        "JANUS_BATCH_REDIS_URL": redis_url,
        "JANUS_BATCH_QUEUE_PREFIX": queue_prefix,
        "JANUS_BATCH_STORAGE_URL": str(tmp_path / "results"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    get_celery.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
    get_celery.cache_clear()


@pytest.fixture
def set_env(monkeypatch: pytest.MonkeyPatch, settings_env: object) -> Callable[..., object]:
    """Change JANUS_BATCH_* variables for the rest of the test and return the new Settings:
    set_env(max_n="4", auth_mode="keys")."""
    from janus_batch.queue import get_celery
    from janus_batch.settings import get_settings

    def apply(**values: str) -> object:
        for name, value in values.items():
            monkeypatch.setenv(f"JANUS_BATCH_{name.upper()}", value)
        get_settings.cache_clear()
        get_celery.cache_clear()  # the app routes chunks by the settings' default model
        return get_settings()

    return apply
