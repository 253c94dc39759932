"""Fixtures of the end-to-end tests: the real API (uvicorn) and a real Celery worker as child
processes, on the tiny checkpoint (built once per session), the test database (SQLite and
PostgreSQL), a private Redis key space, and local or moto S3 storage.

- `stack_env`: the environment of both processes (local results folder by default);
- `s3_stack_env`: the same with results on the moto S3 server (`s3_env`'s bucket);
- `input_bucket`: a second, separate bucket on the same server for job inputs;
- `start_stack(env)`: `janus_batch.ops.stack.local_stack` (API + worker with beat), stopped after;
- `processes`: start single processes (`spawn`), every one stopped after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from janus_batch.ops.stack import Child, Stack, local_stack, spawn
from tests import services
from tests.fixtures.s3 import S3Env, empty_and_delete_bucket


@pytest.fixture
def stack_env(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    queue_prefix: str,
    tiny_checkpoint: Path,
) -> dict[str, str]:
    """Environment of the API and worker processes: test database, private Redis key space,
    tiny model on CPU with one thread, results in a local folder."""
    return services.process_env(
        tmp_path,
        database_url=database_url,
        redis_url=redis_url,
        queue_prefix=queue_prefix,
        model=tiny_checkpoint,
        max_retries="1",
    )


@pytest.fixture
def s3_stack_env(stack_env: dict[str, str], s3_env: S3Env) -> dict[str, str]:
    """`stack_env` with results on the moto S3 server and its test credentials."""
    return {
        **stack_env,
        "JANUS_BATCH_STORAGE_URL": s3_env.storage_url,
        "JANUS_BATCH_S3_ENDPOINT_URL": s3_env.endpoint_url,
        "JANUS_BATCH_S3_REGION": s3_env.region,
        # s3_env put these in os.environ; spelled out so the children never depend on it.
        "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": s3_env.region,
    }


@pytest.fixture
def input_bucket(s3_env: S3Env) -> Iterator[str]:
    """A second bucket on the S3 server, apart from the results bucket; removed after."""
    name = f"input-{uuid.uuid4().hex[:16]}"
    client = s3_env.client()
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        empty_and_delete_bucket(client, name)
        client.close()


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """start_stack(env) runs the API and one worker (with beat) until the test ends."""
    with ExitStack() as exits:

        def start(env: dict[str, str], *, beat: bool = True) -> Stack:
            log_dir = tmp_path / f"stack-{uuid.uuid4().hex[:6]}"
            return exits.enter_context(local_stack(env, log_dir, beat=beat))

        yield start


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[[str, list[str], dict[str, str]], Child]]:
    """start(name, cmd, env) spawns a child process logging to tmp_path/logs/<name>.log;
    every child is stopped (SIGTERM, then SIGKILL) when the test ends."""
    children: list[Child] = []

    def start(name: str, cmd: list[str], env: dict[str, str]) -> Child:
        child = spawn(name, cmd, {**os.environ, **env}, tmp_path / "logs")
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in reversed(children):
            child.stop()
