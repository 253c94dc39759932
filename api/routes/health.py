"""/healthz (the process is up) and /readyz (database, Redis and storage answer)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import SettingsDep, get_storage
from janus_batch import fleet
from janus_batch.constants import CAPTION_QUEUE, CONTROL_QUEUE, GENERATE_QUEUE
from janus_batch.db import get_engine
from janus_batch.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

TIMEOUT = 3.0
QUEUES = (CAPTION_QUEUE, GENERATE_QUEUE, CONTROL_QUEUE)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


def _database(settings: Settings) -> None:
    engine = get_engine(settings.resolved_database_url())
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    with engine.connect() as conn:
        try:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except SQLAlchemyError:
            revision = None
    if revision is None:
        raise RuntimeError("the schema is missing: run `janus-batch db upgrade`")


def _redis(settings: Settings) -> None:
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT
    )
    try:
        client.ping()
    finally:
        client.close()


def _storage(settings: Settings) -> None:
    get_storage(settings).ping()


def _workers(settings: Settings) -> dict[str, object]:
    """Live workers per queue (their announcements in Redis), and a warning for each queue no
    live worker consumes: its jobs stay queued until one starts."""
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT
    )
    try:
        workers = fleet.live_workers(client, settings.queue_prefix)
    except redis.RedisError as exc:
        return {"warnings": [f"live workers unknown: {exc}"]}
    finally:
        client.close()
    per_queue = {q: fleet.consumers(workers, q) for q in QUEUES}
    warnings = [f"no live worker consumes {q}" for q, n in per_queue.items() if not n]
    return {"workers": per_queue, "warnings": warnings}


CHECKS: dict[str, Callable[[Settings], None]] = {
    "database": _database,
    "redis": _redis,
    "storage": _storage,
}


@router.get("/readyz", responses={503: {"description": "A dependency is unavailable."}})
def readyz(settings: SettingsDep) -> JSONResponse:
    """Ready when the database answers SELECT 1, Redis answers PING and storage is usable;
    else 503 naming each failing dependency and why. Also lists the live workers per queue
    and warns of a queue no live worker consumes (the API is ready; jobs would wait)."""
    checks: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            check(settings)
            checks[name] = "ok"
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            checks[name] = f"error: {reason}"
            log.warning("readyz: %s unavailable: %s", name, reason)
    failing = [name for name, state in checks.items() if state != "ok"]
    if not failing:
        body: dict[str, object] = {"status": "ok", "checks": checks}
        body.update(_workers(settings))
        return JSONResponse(body)
    message = "; ".join(f"{name}: {checks[name][len('error: ') :]}" for name in failing)
    return JSONResponse(
        {"status": "unavailable", "checks": checks, "error": {"message": message, "field": None}},
        status_code=503,
    )
