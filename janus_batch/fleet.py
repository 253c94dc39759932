"""Which workers are alive, which queues they consume and which model they serve.

Each worker process announces itself in Redis (`janus:worker:<hostname>`, a key that expires
after `TTL` seconds unless its presence thread refreshes it every `TTL / 3`), so the API can
say when no live worker consumes a kind's queue (`/readyz`, a job's `live_workers`) instead
of showing a job `queued` forever with everything "ok", and which models a job may name
(`janus_batch.served`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

KEY = "janus:worker:"
TTL = 30


def announce(
    client: Any,
    prefix: str,
    hostname: str,
    queues: Iterable[str],
    ttl: int = TTL,
    *,
    storage_down_since: float | None = None,
    model: str | None = None,
) -> None:
    """Say that `hostname` is alive and consumes `queues` (for the next `ttl` seconds), the
    public name of the `model` it serves (None: a control worker), and since when (unix
    time) its storage has been unreachable, if it is."""
    body = json.dumps(
        {
            "queues": sorted(queues),
            "at": time.time(),
            "storage_down_since": storage_down_since,
            "model": model,
        }
    )
    client.set(f"{prefix}{KEY}{hostname}", body, ex=ttl)


def withdraw(client: Any, prefix: str, hostname: str) -> None:
    """The worker is shutting down: forget it at once."""
    client.delete(f"{prefix}{KEY}{hostname}")


def live_workers(client: Any, prefix: str) -> dict[str, list[str]]:
    """{hostname: queues} of every worker whose announcement has not expired."""
    return {name: list(body["queues"]) for name, body in announcements(client, prefix).items()}


def announcements(client: Any, prefix: str) -> dict[str, dict[str, Any]]:
    """{hostname: announcement} of every live worker (queues, at, storage_down_since)."""
    found: dict[str, dict[str, Any]] = {}
    pattern = f"{prefix}{KEY}*"
    for key in client.scan_iter(match=pattern, count=100):
        raw = client.get(key)
        if raw is None:
            continue
        name = key.decode() if isinstance(key, bytes) else str(key)
        try:
            body = json.loads(raw)
            list(body["queues"])
        except (ValueError, KeyError, TypeError):
            continue
        found[name[len(prefix) + len(KEY) :]] = body
    return found


SWEEP_KEY = "janus:sweeper:last"
"""Unix time of the sweeper's last successful run (no expiry: its age is the signal)."""


def record_sweep(client: Any, prefix: str) -> None:
    """The sweeper finished a run now."""
    client.set(f"{prefix}{SWEEP_KEY}", repr(time.time()))


def last_sweep(client: Any, prefix: str) -> float | None:
    """Unix time of the sweeper's last successful run, or None if none is recorded."""
    raw = client.get(f"{prefix}{SWEEP_KEY}")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def models(found: dict[str, dict[str, Any]]) -> dict[str, int]:
    """{public model name: live workers serving it} of `announcements`."""
    served: dict[str, int] = {}
    for body in found.values():
        name = body.get("model")
        if isinstance(name, str) and name:
            served[name] = served.get(name, 0) + 1
    return served


def consumers(workers: dict[str, list[str]], queue: str) -> int:
    """How many of `workers` consume `queue`."""
    return sum(1 for queues in workers.values() if queue in queues)


_cache: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}
CACHE_SECONDS = 5.0


def recent_announcements(redis_url: str, prefix: str) -> dict[str, dict[str, Any]]:
    """`announcements`, cached for a few seconds per process; {} if Redis does not answer."""
    import redis

    key = redis_url + prefix
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and now - hit[0] < CACHE_SECONDS:
        return hit[1]
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        found = announcements(client, prefix)
    except redis.RedisError:
        found = {}
    finally:
        client.close()
    _cache[key] = (now, found)
    return found


def consumers_of(redis_url: str, prefix: str, queue: str) -> int:
    """Live workers consuming `queue` (cached for a few seconds per process); 0 if Redis does
    not answer."""
    found = recent_announcements(redis_url, prefix)
    return sum(1 for body in found.values() if queue in body["queues"])


def live_models(redis_url: str, prefix: str) -> list[str]:
    """Public names of the models live workers serve, sorted (cached for a few seconds per
    process); [] if Redis does not answer."""
    return sorted(models(recent_announcements(redis_url, prefix)))
