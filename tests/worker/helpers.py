"""Test helpers for the worker: jobs made like the API makes them, and an in-process
"worker" that pops the messages the code enqueued on Redis and runs the pipeline functions.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from unittest.mock import patch

import redis
from PIL import Image
from sqlalchemy import select, update

from janus_batch import constants, lifecycle
from janus_batch.db import session_scope
from janus_batch.inputs import caption_item, generate_item, parse_params
from janus_batch.items import add_items
from janus_batch.jobs import cancel_job
from janus_batch.models import Item, Job, new_id, utcnow
from janus_batch.states import JobKind, JobStatus
from worker import tasks
from worker.caption import CaptionHandler
from worker.chunk import dispatch_job, run_chunk
from worker.context import Context
from worker.expand import expand_source
from worker.finalize import finalize_job
from worker.generate import GenerateHandler
from worker.sweeper import sweep

QUEUES = (constants.CONTROL_QUEUE, constants.CAPTION_QUEUE, constants.GENERATE_QUEUE)


def create_job(
    ctx: Context,
    kind: str,
    items: list[Any] | None = None,
    *,
    params: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
) -> str:
    """A job as the API creates it: the row, then inline items (validated, inserted, enqueued)
    and expanded=True, or a source left for the expand task."""
    settings = ctx.settings
    parsed = parse_params(
        kind, params, max_n=settings.max_n, default_max_new_tokens=settings.max_new_tokens
    )
    job_id = new_id("job")
    with session_scope(ctx.database_url) as session:
        session.add(
            Job(
                id=job_id,
                owner=constants.LOCAL_OWNER,
                kind=kind,
                status=JobStatus.QUEUED,
                model=settings.model,
                params=parsed.model_dump(mode="json"),
                source=source,
                output_prefix=f"jobs/{job_id}",
                expanded=False,
                total=0,
                succeeded=0,
                failed=0,
                cancelled=0,
            )
        )
    if source is None:
        if kind == JobKind.CAPTION:
            new = [
                caption_item(raw, parsed, where=f"items[{i}]", max_prompt_chars=4000)
                for i, raw in enumerate(items or [])
            ]
        else:
            new = [
                generate_item(raw, parsed, where=f"items[{i}]", max_prompt_chars=4000, max_n=16)
                for i, raw in enumerate(items or [])
            ]
        add_items(
            ctx.database_url,
            ctx.app,
            job_id,
            kind,
            new,
            chunk_size=settings.chunk_size,
            window=settings.dispatch_window,
        )
        with session_scope(ctx.database_url) as session:
            session.execute(update(Job).where(Job.id == job_id).values(expanded=True))
    return job_id


def die_holding(ctx: Context, job_id: str, item_ids: list[int]) -> None:
    """A worker claims the items, then is killed: the lease runs out, the message is gone."""
    with session_scope(ctx.database_url) as session:
        assert lifecycle.claim(session, job_id, item_ids, lease_seconds=30)
        session.execute(
            update(Item)
            .where(Item.id.in_(item_ids))
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )


def get_job(ctx: Context, job_id: str) -> Job:
    with session_scope(ctx.database_url) as session:
        return session.get(Job, job_id)


def get_items(ctx: Context, job_id: str) -> list[Item]:
    with session_scope(ctx.database_url) as session:
        return list(
            session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.idx)).all()
        )


def redis_client(ctx: Context) -> redis.Redis:
    return redis.Redis.from_url(ctx.settings.redis_url)


def queue_key(ctx: Context, queue: str) -> str:
    return f"{ctx.settings.queue_prefix}{queue}"


def pop_message(ctx: Context, queue: str) -> tuple[str, list[Any]] | None:
    """The oldest message on `queue` as (task name, args), removed; None if empty."""
    raw = redis_client(ctx).rpop(queue_key(ctx, queue))
    if raw is None:
        return None
    message = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return message["headers"]["task"], args


def peek_messages(ctx: Context, queue: str) -> list[tuple[str, list[Any]]]:
    """Every message on `queue`, oldest first, left in place."""
    out = []
    for raw in reversed(redis_client(ctx).lrange(queue_key(ctx, queue), 0, -1)):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        out.append((message["headers"]["task"], args))
    return out


def clear_queues(ctx: Context) -> None:
    redis_client(ctx).delete(*(queue_key(ctx, q) for q in QUEUES))


def dispatch(ctx: Context, task: str, args: list[Any]) -> Any:
    """Run one message the way the Celery task would."""
    if task == constants.CAPTION_CHUNK_TASK:
        return run_chunk(ctx, CaptionHandler(), *args)
    if task == constants.GENERATE_CHUNK_TASK:
        return run_chunk(ctx, GenerateHandler(), *args)
    if task == constants.EXPAND_SOURCE_TASK:
        return expand_source(ctx, *args)
    if task == constants.FINALIZE_JOB_TASK:
        return finalize_job(ctx, *args)
    if task == constants.SWEEP_TASK:
        return sweep(ctx)
    if task == constants.DISPATCH_JOB_TASK:
        return dispatch_job(ctx, *args)
    if task == constants.SEND_WEBHOOK_TASK:  # the Celery task, eagerly: its retries at once
        with patch.object(tasks, "current_context", lambda: ctx):
            return tasks.send_webhook.apply(args=args).get()
    raise AssertionError(f"unknown task {task}")


def drain(ctx: Context, limit: int = 10_000) -> list[tuple[str, list[Any]]]:
    """Run queued messages (control first) until every queue is empty; returns them."""
    done = []
    while len(done) < limit:
        for queue in QUEUES:
            message = pop_message(ctx, queue)
            if message is not None:
                dispatch(ctx, *message)
                done.append(message)
                break
        else:
            return done
    raise AssertionError("the queues did not drain")


def png_bytes(
    color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 32)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(color: tuple[int, int, int] = (30, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buffer, "JPEG")
    return buffer.getvalue()


def read_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def cancel_like_the_api(ctx: Context, job_id: str) -> None:
    """Cancel as POST /v1/jobs/{id}/cancel does: pending items cancelled, job cancelling or
    finalizing (whose winner sends finalize)."""
    cancel_job(ctx.database_url, ctx.app, constants.LOCAL_OWNER, job_id)


class EngineDouble:
    """The tiny engine's pass-level API, for doubles to override `run_pass`."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.model_name = engine.model_name
        self.max_batch_rows = engine.max_batch_rows
        self.image_size = engine.image_size
        self.prepare = engine.prepare
        self.unit_rows = engine.unit_rows
        self.decode = engine.decode

    def run_pass(self, units: list[Any]) -> list[Any]:
        return self.engine.run_pass(units)


class FirstPassEngine(EngineDouble):
    """The tiny engine, with `during()` called while the first pass runs."""

    def __init__(self, engine: Any, during: Callable[[], None]) -> None:
        super().__init__(engine)
        self.during, self.calls = during, 0

    def run_pass(self, units: list[Any]) -> list[Any]:
        self.calls += 1
        if self.calls == 1:
            self.during()
        return self.engine.run_pass(units)


class CancellingEngine(FirstPassEngine):
    """The tiny engine, with the job cancelled (as the API does) during the first pass."""

    def __init__(self, engine: Any, ctx: Context, job_id: str) -> None:
        super().__init__(engine, lambda: cancel_like_the_api(ctx, job_id))
