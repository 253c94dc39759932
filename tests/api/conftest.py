"""Fixtures for the API: a TestClient on the test database (SQLite and PostgreSQL), the real
Redis under the test's private prefix."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from janus_batch.settings import Settings


@pytest.fixture
def client(settings_env: Settings) -> Iterator[TestClient]:
    """A client of a fresh app in open mode (owner = local)."""
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def queue_len(redis_url: str, queue_prefix: str) -> Iterator[Callable[[str], int]]:
    """Messages waiting in a Celery queue of this test's key space (LLEN prefix+queue)."""
    conn = redis.Redis.from_url(redis_url)
    yield lambda queue: conn.llen(queue_prefix + queue)
    conn.close()


@pytest.fixture
def queue_messages(redis_url: str, queue_prefix: str) -> Iterator[Callable[[str], list[Any]]]:
    """The Celery messages waiting in a queue, as (task name, args) pairs."""
    conn = redis.Redis.from_url(redis_url)

    def read(queue: str) -> list[tuple[str, list[Any]]]:
        messages = [json.loads(raw) for raw in conn.lrange(queue_prefix + queue, 0, -1)]
        return [
            (m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0])
            for m in reversed(messages)  # LPUSH: newest first
        ]

    yield read
    conn.close()
