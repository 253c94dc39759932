"""Flower, started with the documented command, shows the workers and the chunk tasks with
their job ids; a worker running a chunk stays Online (heartbeats flow) and answers Flower's
inspect with its active task."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from janus_batch.migrate import upgrade
from janus_batch.ops.stack import flower_command, free_port, local_stack, spawn, wait_http
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
    flower = spawn("flower", flower_command(port), env, tmp_path / "logs")
    try:
        flower_url = f"http://127.0.0.1:{port}"
        wait_http(f"{flower_url}/healthcheck", flower)
        with local_stack(env, tmp_path / "logs", beat=False) as stack:
            job = httpx.post(
                f"{stack.api_url}/v1/jobs",
                json={
                    "kind": "generate",
                    "params": {"n": 4},  # 32 guided images: a chunk that runs for a while
                    "items": [{"prompt": f"a red fox {i}", "seed": i} for i in range(8)],
                },
            ).json()
            busy = _while_running(stack.api_url, flower_url, job["id"])
            served = _served(stack.api_url)
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
    # the GPU and control workers announced themselves: /readyz counts them
    assert served == {"janus.caption": 1, "janus.generate": 1, "janus.control": 1}
    alive, active = busy
    assert any(name.startswith("local@") and up for name, up in alive.items()), alive
    assert [t for t in active if t.get("name") == "janus.generate_chunk"], (active, busy)


def _while_running(api_url: str, flower_url: str, job_id: str) -> tuple[dict, list[dict]]:
    """While the job's chunk runs: Flower's worker status (from heartbeats) and the tasks it
    sees started on the GPU worker."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = httpx.get(f"{api_url}/v1/jobs/{job_id}", timeout=5).json()
        if job["status"] == "running" and job["counts"]["running"]:
            started = httpx.get(f"{flower_url}/api/tasks?state=STARTED", timeout=5).json()
            active = [t for t in started.values() if str(t.get("worker")).startswith("local@")]
            alive = httpx.get(f"{flower_url}/api/workers?status=1", timeout=5).json()
            return alive, active
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never ran")


def _served(api_url: str) -> dict[str, int]:
    """The live workers per queue /readyz reports once both workers have announced (every
    queue consumed; its other warnings, such as the sweeper's without beat, do not matter)."""
    deadline = time.monotonic() + 60
    while True:
        workers = dict(httpx.get(f"{api_url}/readyz", timeout=10).json().get("workers") or {})
        if (workers and all(workers.values())) or time.monotonic() > deadline:
            return workers
        time.sleep(0.5)
