"""Flower, started with the documented command, shows the workers and the chunk tasks with
their job ids."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from janus_batch.migrate import upgrade
from janus_batch.stack import free_port, local_stack, spawn, wait_http


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from janus import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), image_size=64)


def test_flower_lists_workers_and_chunk_tasks_with_job_ids(
    tmp_path: Path, sqlite_url: str, redis_url: str, queue_prefix: str, tiny: Path
) -> None:
    upgrade(sqlite_url)
    env = {
        **os.environ,
        "JANUS_BATCH_DATABASE_URL": sqlite_url,
        "JANUS_BATCH_REDIS_URL": redis_url,
        "JANUS_BATCH_QUEUE_PREFIX": queue_prefix,
        "JANUS_BATCH_STORAGE_URL": str(tmp_path / "results"),
        "JANUS_BATCH_DATA_DIR": str(tmp_path / "data"),
        "JANUS_BATCH_MODEL": str(tiny),
        "JANUS_BATCH_DEVICE": "cpu",
        "JANUS_BATCH_DTYPE": "float32",
        "JANUS_BATCH_TORCH_THREADS": "1",
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    port = free_port()
    flower = spawn(
        "flower",
        [sys.executable, "-m", "celery", "-A", "janus_batch.celeryapp", "flower",
         f"--port={port}", "--address=127.0.0.1"],
        env, tmp_path / "logs",
    )
    try:
        flower_url = f"http://127.0.0.1:{port}"
        wait_http(f"{flower_url}/healthcheck", flower)
        with local_stack(env, tmp_path / "logs", beat=False) as stack:
            job = httpx.post(
                f"{stack.api_url}/v1/jobs",
                json={"kind": "generate", "params": {"n": 1},
                      "items": [{"prompt": "a red fox", "seed": 1}]},
            ).json()
            tasks: dict = {}
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                tasks = httpx.get(f"{flower_url}/api/tasks", timeout=5).json()
                if any(t.get("name") == "janus.generate_chunk" and t.get("state") == "SUCCESS"
                       for t in tasks.values()):
                    break
                time.sleep(1)
            workers = httpx.get(f"{flower_url}/api/workers?refresh=1", timeout=10).json()
    finally:
        flower.stop()
    chunk = [t for t in tasks.values() if t.get("name") == "janus.generate_chunk"]
    assert chunk, f"Flower saw no chunk task: {tasks}"
    assert job["id"] in chunk[0]["args"]
    assert chunk[0]["state"] == "SUCCESS"
    assert any(name.startswith("local@") for name in workers), workers
