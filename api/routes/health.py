"""/healthz (the process is up) and /readyz (database, Redis and storage answer)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import SettingsDep, get_storage
from janus_batch import fleet, served
from janus_batch.constants import CONTROL_QUEUE
from janus_batch.db import get_engine
from janus_batch.queue import chunk_queue
from janus_batch.settings import Settings
from janus_batch.states import JobKind

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

TIMEOUT = 3.0


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


STALE_SWEEPS = 3
"""Sweep intervals without a run before the sweeper is reported stale."""


def _models(
    settings: Settings, found: dict[str, dict], waited: list[str]
) -> dict[str, dict[str, object]]:
    """Every model a job may name (`janus_batch.served`: the default, SERVED_MODELS, live
    workers' models) and every model a queued or running job waits for (`waited`): whether
    it is the default, its live workers and its queues by kind."""
    default = settings.resolved_default_model()
    live = fleet.models(found)
    return {
        name: {
            "default": name == default,
            "workers": live.get(name, 0),
            "queues": {kind.value: chunk_queue(kind, name, default) for kind in JobKind},
        }
        for name in dict.fromkeys([*settings.served_model_names(), *sorted(live), *waited])
    }


def _workers(settings: Settings) -> dict[str, object]:
    """Live workers per queue (their announcements in Redis) and per model, the sweeper's
    last run, and warnings: a queue no live worker consumes (its jobs stay queued until one
    starts; for each kind of each model), a worker whose storage is down, a sweeper that has
    not run for STALE_SWEEPS intervals (expired leases and lost messages are then never
    handed back)."""
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT
    )
    try:
        found = fleet.announcements(client, settings.queue_prefix)
        last_sweep = fleet.last_sweep(client, settings.queue_prefix)
    except redis.RedisError as exc:
        return {"warnings": [f"live workers unknown: {exc}"]}
    finally:
        client.close()
    workers = {name: list(body["queues"]) for name, body in found.items()}
    try:
        waited = served.models_of_live_jobs(settings.resolved_database_url())
    except SQLAlchemyError:  # the database check reports it
        waited = []
    models = _models(settings, found, waited)
    default = settings.resolved_default_model()
    per_queue: dict[str, int] = {}
    warnings = []
    for kind in JobKind:
        for name in models:
            queue = chunk_queue(kind, name, default)
            per_queue[queue] = fleet.consumers(workers, queue)
            if not per_queue[queue]:
                of = "" if name == default else f" (model {name})"
                warnings.append(f"no live worker consumes {queue}{of}")
    per_queue[CONTROL_QUEUE] = fleet.consumers(workers, CONTROL_QUEUE)
    if not per_queue[CONTROL_QUEUE]:
        warnings.append(f"no live worker consumes {CONTROL_QUEUE}")
    now = time.time()
    for name, body in sorted(found.items()):
        down = body.get("storage_down_since")
        if isinstance(down, (int, float)):
            warnings.append(f"worker {name}: storage unreachable for {now - down:.0f} s")
    age = None if last_sweep is None else round(now - last_sweep, 1)
    if age is None:
        warnings.append("the sweeper has never run: start the control worker with beat")
    elif age > STALE_SWEEPS * settings.sweep_interval:
        warnings.append(
            f"the sweeper last ran {age:.0f} s ago (every {settings.sweep_interval:.0f} s "
            "expected): is the control worker with beat running?"
        )
    return {
        "workers": per_queue,
        "models": models,
        "sweeper": {"last_run_seconds_ago": age},
        "warnings": warnings,
    }


CHECKS: dict[str, Callable[[Settings], None]] = {
    "database": _database,
    "redis": _redis,
    "storage": _storage,
}


@router.get("/readyz", responses={503: {"description": "A dependency is unavailable."}})
def readyz(settings: SettingsDep) -> JSONResponse:
    """Ready when the database answers SELECT 1, Redis answers PING and storage is usable;
    else 503 naming each failing dependency and why. Also lists the live workers per queue,
    the models jobs may name (with their live workers), and warns of a queue no live worker
    consumes (the API is ready; jobs would wait)."""
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
