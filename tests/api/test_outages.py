"""Dependencies down, said clearly: PostgreSQL behind a TCP proxy that is cut, then restored.
A submit during the outage gets a quick 503 that names no internal address and creates
nothing; the same request (same Idempotency-Key) succeeds once the database is back."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from api.main import create_app
from janus_batch.db import dispose_engines, session_scope
from janus_batch.migrate import upgrade
from janus_batch.models import Item, Job
from tests.fixtures.proxy import TcpProxy


@pytest.fixture
def proxied_pg(pg_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """The test database, reached through a TCP proxy: (proxied URL, proxy)."""
    upgrade(pg_url)
    url = make_url(pg_url)
    with TcpProxy(url.port or 5432) as proxy:
        yield url.set(port=proxy.port).render_as_string(hide_password=False), proxy
        dispose_engines()


def test_database_outage_503_then_the_same_submit_succeeds(
    set_env, proxied_pg: tuple[str, TcpProxy], pg_url: str
) -> None:
    url, proxy = proxied_pg
    set_env(database_url=url)
    body = {"kind": "generate", "items": [f"prompt {i}" for i in range(50)]}
    headers = {"Idempotency-Key": "outage-1"}
    with TestClient(create_app()) as client:
        assert client.get("/readyz").json()["checks"]["database"] == "ok"
        proxy.cut()
        started = time.monotonic()
        refused = client.post("/v1/jobs", json=body, headers=headers)
        assert time.monotonic() - started < 15  # bounded, never a hang
        assert refused.status_code == 503, refused.text
        message = refused.json()["error"]["message"]
        assert message.startswith("database unavailable")
        assert str(proxy.port) not in message and "127.0.0.1" not in message
        assert refused.headers["Retry-After"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("error")

        with session_scope(pg_url) as session:  # the database itself: nothing was created
            assert session.scalar(select(func.count()).select_from(Job)) == 0

        proxy.restore()
        created = client.post("/v1/jobs", json=body, headers=headers)
        assert created.status_code == 202, created.text
        replay = client.post("/v1/jobs", json=body, headers=headers)
        assert replay.status_code == 200 and replay.json()["id"] == created.json()["id"]
    with session_scope(pg_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        assert session.scalar(select(func.count()).select_from(Item)) == 50
