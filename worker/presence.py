"""A worker's presence in Redis (`janus_batch.fleet`): announced at start, refreshed by a
daemon thread every third of its TTL (with its storage breaker's state), withdrawn at
shutdown."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

import redis

from janus_batch import fleet
from janus_batch.settings import Settings

log = logging.getLogger(__name__)


class Presence:
    """Keeps `hostname` (consuming `queues`, serving `model`: its public name, None for a
    control worker) announced while the worker lives."""

    def __init__(
        self,
        settings: Settings,
        hostname: str,
        queues: Iterable[str],
        storage_down_since: Callable[[], datetime | None] = lambda: None,
        model: str | None = None,
    ) -> None:
        self.prefix = settings.queue_prefix
        self.model = model
        self._storage_down_since = storage_down_since
        self.hostname = hostname
        self.queues = sorted(queues)
        self._client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="janus-presence", daemon=True)

    def start(self) -> Presence:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            fleet.withdraw(self._client, self.prefix, self.hostname)
        except redis.RedisError as exc:
            log.warning("presence not withdrawn: %s", exc)

    def _loop(self) -> None:
        """Announce every TTL / 3, and within a second of the storage state changing."""
        announced: tuple[float, datetime | None] | None = None
        while True:
            down = self._storage_down_since()
            now = time.monotonic()
            if announced is None or down != announced[1] or now - announced[0] >= fleet.TTL / 3:
                try:
                    fleet.announce(
                        self._client,
                        self.prefix,
                        self.hostname,
                        self.queues,
                        storage_down_since=down.timestamp() if down else None,
                        model=self.model,
                    )
                    announced = (now, down)
                except redis.RedisError as exc:  # Redis away: the key expires, the API says so
                    log.warning("presence not announced: %s", exc)
                    announced = (now, down)
            if self._stop.wait(1.0):
                return
