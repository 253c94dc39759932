"""Bulk item insertion enqueues whole chunks as it goes."""

from __future__ import annotations

import base64
import json

import redis
from sqlalchemy import func, select

from janus_batch.constants import GENERATE_QUEUE
from janus_batch.db import session_scope
from janus_batch.items import NewItem, add_items
from janus_batch.models import Item, Job
from janus_batch.queue import make_celery


def test_pages_hold_whole_chunks_and_every_item_is_enqueued_once(
    settings_env, database_url: str, redis_url: str, queue_prefix: str
) -> None:
    with session_scope(database_url) as session:
        session.add(
            Job(
                id="job_x",
                owner="local",
                kind="generate",
                model="m",
                params={},
                output_prefix="jobs/job_x",
            )
        )
    app = make_celery(settings_env)
    items = (NewItem({"prompt": f"p{i}", "n": 1, "seed": i}) for i in range(250))
    added = add_items(database_url, app, "job_x", "generate", items, chunk_size=32, page_size=100)
    assert added == 250

    raw = redis.Redis.from_url(redis_url).lrange(f"{queue_prefix}{GENERATE_QUEUE}", 0, -1)
    # Celery message protocol 2: body = [args, kwargs, embed]; args = [job_id, item_ids].
    chunks = [json.loads(_body(m))[0][1] for m in raw]
    sizes = sorted((len(c) for c in chunks), reverse=True)
    # A page of 100 rounds down to 96 (3 whole chunks): pages 96, 96, 58 -> 32 x 7 + 26.
    assert sizes == [32] * 7 + [26]
    ids = [i for c in chunks for i in c]
    assert len(ids) == len(set(ids)) == 250
    with session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(Item)) == 250
        assert session.get(Job, "job_x").total == 250


def _body(message: bytes) -> str:
    return base64.b64decode(json.loads(message)["body"]).decode()
