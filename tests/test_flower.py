"""Flower, started with the documented command, shows the workers and the chunk tasks with
their job ids."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

from janus_batch.migrate import upgrade
from janus_batch.ops.stack import free_port, local_stack, spawn, wait_http
from tests.services import process_env


def test_flower_lists_workers_and_chunk_tasks_with_job_ids(
    tmp_path: Path, sqlite_url: str, redis_url: str, queue_prefix: str, tiny_checkpoint: Path
) -> None:
    upgrade(sqlite_url)
    env = {
        **os.environ,
        **process_env(
            tmp_path,
            database_url=sqlite_url,
            redis_url=redis_url,
            queue_prefix=queue_prefix,
            model=tiny_checkpoint,
        ),
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    port = free_port()
    flower = spawn(
        "flower",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "janus_batch.celeryapp",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        env,
        tmp_path / "logs",
    )
    try:
        flower_url = f"http://127.0.0.1:{port}"
        wait_http(f"{flower_url}/healthcheck", flower)
        with local_stack(env, tmp_path / "logs", beat=False) as stack:
            job = httpx.post(
                f"{stack.api_url}/v1/jobs",
                json={
                    "kind": "generate",
                    "params": {"n": 1},
                    "items": [{"prompt": "a red fox", "seed": 1}],
                },
            ).json()
            tasks: dict = {}
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                tasks = httpx.get(f"{flower_url}/api/tasks", timeout=5).json()
                if any(
                    t.get("name") == "janus.generate_chunk" and t.get("state") == "SUCCESS"
                    for t in tasks.values()
                ):
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
