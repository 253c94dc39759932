"""Fixtures of the worker tests: a tiny Janus checkpoint and engine (built once per session),
and a pipeline `ctx` on the test database (SQLite and PostgreSQL), a private Redis key space,
moto S3 for inputs, and local or S3 storage for results."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from janus_batch.queue import get_celery
from janus_batch.settings import get_settings
from janus_batch.storage import storage_from_settings
from worker.context import Context

BATCH_ROWS = 4


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint: Path) -> Any:
    """The tiny checkpoint loaded once per session on CPU in float32."""
    from janus import JanusEngine

    return JanusEngine.load(
        str(tiny_checkpoint), device="cpu", dtype="float32", max_batch_rows=BATCH_ROWS
    )


@pytest.fixture
def worker_env(
    settings_env: Any, s3_env: Any, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The JANUS_BATCH_* environment of a worker on the test services and tiny model."""
    env = {
        "JANUS_BATCH_S3_ENDPOINT_URL": s3_env.endpoint_url,
        "JANUS_BATCH_S3_REGION": s3_env.region,
        "JANUS_BATCH_MODEL": str(tiny_checkpoint),
        "JANUS_BATCH_DEVICE": "cpu",
        "JANUS_BATCH_DTYPE": "float32",
        "JANUS_BATCH_TORCH_THREADS": "1",
        "JANUS_BATCH_BATCH_ROWS": str(BATCH_ROWS),
        "JANUS_BATCH_CHUNK_SIZE": "8",
        "JANUS_BATCH_MAX_RETRIES": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    get_celery.cache_clear()
    return env


@pytest.fixture
def make_ctx(
    worker_env: dict[str, str], tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Context]]:
    """Build a pipeline context after optional JANUS_BATCH_* overrides (storage, lease...)."""
    made: list[Context] = []

    def make(**overrides: str) -> Context:
        for key, value in overrides.items():
            monkeypatch.setenv(f"JANUS_BATCH_{key.upper()}", value)
        get_settings.cache_clear()
        get_celery.cache_clear()
        settings = get_settings()
        ctx = Context(
            settings=settings,
            storage=storage_from_settings(settings),
            app=get_celery(),
            engine=lambda: tiny_engine,
        )
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.pipelines.close()
        ctx.storage.close()


@pytest.fixture
def ctx(make_ctx: Callable[..., Context]) -> Context:
    """A pipeline context with local result storage."""
    return make_ctx()
