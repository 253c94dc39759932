"""The CLI against an API in keys mode (the API process alone, no worker): a missing or
wrong key is one line and exit 4; a key made with `keys create` works; a revoked one not."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from janus_batch.ops.stack import api_command, free_port, spawn, wait_http
from tests import services
from tests.cli.conftest import invoke


@pytest.fixture(scope="module")
def keys_api(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict]:
    from janus_batch.db import dispose_engines
    from janus_batch.migrate import upgrade

    base = tmp_path_factory.mktemp("keys-api")
    database_url = f"sqlite:///{base / 'jobs.db'}"
    upgrade(database_url)
    dispose_engines()
    prefix = f"jbtest-cli-keys-{uuid.uuid4().hex[:8]}:"
    port = free_port()
    env = {
        "JANUS_BATCH_DATABASE_URL": database_url,
        "JANUS_BATCH_REDIS_URL": redis_url,
        "JANUS_BATCH_QUEUE_PREFIX": prefix,
        "JANUS_BATCH_STORAGE_URL": str(base / "results"),
        "JANUS_BATCH_DATA_DIR": str(base / "data"),
        "JANUS_BATCH_AUTH_MODE": "keys",
    }
    api = spawn("api", api_command(port), {**os.environ, **env}, base / "logs")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", api)
        yield {**env, "JANUS_BATCH_API_URL": f"http://127.0.0.1:{port}"}
    finally:
        api.stop()
        dispose_engines()
        services.delete_prefix(redis_url, prefix)


def test_keys_mode(keys_api: dict, tmp_path: Path) -> None:
    missing = invoke(keys_api, "list")
    assert missing.exit_code == 4
    assert missing.stderr.strip() == (
        "error: unauthorized (401): an API key is required: send 'Authorization: Bearer "
        "<key>'. Pass --api-key or set JANUS_BATCH_API_KEY."
    )

    wrong = invoke(keys_api, "status", "job_1", "--api-key", "jb_wrong")
    assert wrong.exit_code == 4
    assert wrong.stderr.strip() == (
        "error: unauthorized (401): invalid or revoked API key. "
        "Pass --api-key or set JANUS_BATCH_API_KEY."
    )

    created = invoke(keys_api, "keys", "create", "alice")
    assert created.exit_code == 0, created.stderr
    secret = created.stdout.strip()  # the secret alone: KEY=$(janus-batch keys create alice)
    key_id = created.stderr.split("created key ", 1)[1].split()[0]

    ok = invoke({**keys_api, "JANUS_BATCH_API_KEY": secret}, "list")
    assert ok.exit_code == 0, ok.stderr
    assert "no jobs" in ok.stderr

    assert invoke(keys_api, "keys", "revoke", key_id).exit_code == 0
    revoked = invoke(keys_api, "list", "--api-key", secret)
    assert revoked.exit_code == 4
    assert "invalid or revoked API key" in revoked.stderr
