"""A chunk message lost from Redis (e.g. a Redis restart) before any worker took it: the
sweeper, on Celery beat inside a real worker process, finds the items pending in SQL with an
empty queue and re-enqueues them; the job completes with every item run exactly once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from janus_batch import constants
from janus_batch.ops.stack import ALL_QUEUES, api_command, free_port, wait_http, worker_command
from tests.e2e.helpers import assert_counters_match_items, jsonl, post_job, read_rows, wait_final

PROMPTS = [{"prompt": f"a small house with a green door, number {i}", "seed": i} for i in range(5)]
CHUNK_SIZE = 2  # 5 items -> 3 chunk messages, all lost


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_lost_message_is_finished_by_the_sweeper(
    stack_env: dict[str, str],
    database_url: str,
    redis_url: str,
    queue_prefix: str,
    processes: Any,
    tmp_path: Path,
) -> None:
    env = {
        **stack_env,
        "JANUS_BATCH_CHUNK_SIZE": str(CHUNK_SIZE),
        "JANUS_BATCH_DISPATCH_WINDOW": "3",
    }
    port = free_port()
    api = processes("api", api_command(port), env)
    api_url = f"http://127.0.0.1:{port}"
    wait_http(f"{api_url}/healthz", api)
    queue = redis.Redis.from_url(redis_url)
    key = queue_prefix + constants.GENERATE_QUEUE
    try:
        with httpx.Client(base_url=api_url, timeout=30) as http:
            job = post_job(http, {"kind": "generate", "params": {"n": 1}, "items": PROMPTS})
            assert queue.llen(key) == 3, "the API did not enqueue one message per chunk"
            assert queue.delete(key) == 1  # the messages are lost; SQL still has the items
            assert queue.llen(key) == 0
            rows = read_rows(database_url, job["id"])
            assert rows.by_status == {"pending": len(PROMPTS)}

            worker_env = {
                **env,
                # longer than the worker takes to load the model while holding the re-sent
                # messages: a reservation that old would count as a dead worker's
                "JANUS_BATCH_STALE_PENDING_SECONDS": "5",
                "JANUS_BATCH_SWEEP_INTERVAL": "1",
            }
            schedule = tmp_path / "celerybeat-schedule"
            worker = processes(
                "worker", worker_command("lost", True, schedule, queues=ALL_QUEUES), worker_env
            )
            done = wait_final(http, job["id"], [worker, api], timeout=180)
    finally:
        queue.close()

    assert done["status"] == "succeeded", done
    assert done["counts"]["succeeded"] == done["counts"]["total"] == len(PROMPTS)
    rows = read_rows(database_url, job["id"])
    assert_counters_match_items(rows)
    assert rows.by_status == {"succeeded": len(PROMPTS)}
    assert [item.attempts for item in rows.items] == [1] * len(PROMPTS)  # each run once

    results = tmp_path / "results" / "jobs" / job["id"]
    lines = jsonl((results / constants.RESULTS_NAME).read_bytes())
    assert [line["idx"] for line in lines] == list(range(len(PROMPTS)))
    images = sorted(p.name for p in (results / "images").iterdir())
    assert images == [f"{i:08d}_0.png" for i in range(len(PROMPTS))]

    # It was the sweeper that brought them back, and no item was claimed twice.
    log = worker.log.read_text(errors="replace")
    requeued = re.findall(rf"job={job['id']} re-enqueued (\d+) items \(message lost\)", log)
    # at least once each (a machine so busy that loading the model outlasts the stale time can
    # re-send them once more: harmless, the claims below still count each item once)
    assert sum(map(int, requeued)) >= len(PROMPTS), log[-4000:]
    claimed = re.findall(rf"job={job['id']} chunk claimed (\d+)/\d+ items", log)
    assert sum(map(int, claimed)) == len(PROMPTS), log[-4000:]
