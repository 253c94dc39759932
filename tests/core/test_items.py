"""Bulk item insertion enqueues whole chunks as it goes."""

from __future__ import annotations

import base64
import json

import redis
from sqlalchemy import func, select

from janus_batch import lifecycle
from janus_batch.constants import GENERATE_QUEUE
from janus_batch.db import session_scope
from janus_batch.items import NewItem, add_items, dispatch
from janus_batch.lifecycle import Outcome
from janus_batch.models import Item, Job
from janus_batch.queue import make_celery
from janus_batch.states import ItemStatus


def _chunks(redis_url: str, queue_prefix: str) -> list[list[int]]:
    raw = redis.Redis.from_url(redis_url).lrange(f"{queue_prefix}{GENERATE_QUEUE}", 0, -1)
    # Celery message protocol 2: body = [args, kwargs, embed]; args = [job_id, item_ids].
    return [json.loads(_body(m))[0][1] for m in reversed(raw)]  # oldest first


def _generate_job(session, job_id: str, model: str) -> None:
    """A bare generate job row (no items yet) for the dispatch tests."""
    lifecycle.create_job(
        session,
        id=job_id,
        owner="local",
        kind="generate",
        model=model,
        params={},
        source=None,
        idempotency_key=None,
        output_prefix=f"jobs/{job_id}",
    )


def test_a_job_keeps_a_window_of_chunks_in_the_broker_and_each_end_releases_one(
    settings_env, database_url: str, redis_url: str, queue_prefix: str
) -> None:
    with session_scope(database_url) as session:
        # the default model: its chunks use the plain queues
        _generate_job(session, "job_x", settings_env.model)
    app = make_celery(settings_env)
    items = (NewItem({"prompt": f"p{i}", "n": 1, "seed": i}) for i in range(250))
    added = add_items(
        database_url, app, "job_x", "generate", items, chunk_size=32, window=3, page_size=100
    )
    assert added == 250
    with session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(Item)) == 250
        assert session.get(Job, "job_x").total == 250
        idx_of = dict(session.execute(select(Item.id, Item.idx)).all())

    chunks = _chunks(redis_url, queue_prefix)
    assert [[idx_of[i] for i in c] for c in chunks] == [
        list(range(0, 32)),
        list(range(32, 64)),
        list(range(64, 96)),
    ]  # a window of 3 chunks, in idx order, however many pages were inserted
    assert dispatch(database_url, app, "job_x", "generate", chunk_size=32, window=3) == 0

    with session_scope(database_url) as session:  # the first chunk runs and ends
        claimed = lifecycle.claim(session, "job_x", chunks[0], lease_seconds=60)
        assert dispatch(database_url, app, "job_x", "generate", chunk_size=32, window=3) == 0
        lifecycle.complete(session, [Outcome(c, ItemStatus.SUCCEEDED) for c in claimed])
    assert dispatch(database_url, app, "job_x", "generate", chunk_size=32, window=3) == 32
    released = _chunks(redis_url, queue_prefix)[3]
    assert [idx_of[i] for i in released] == list(range(96, 128))
    ids = [i for c in _chunks(redis_url, queue_prefix) for i in c]
    assert len(ids) == len(set(ids)) == 128  # every item sent once


def _body(message: bytes) -> str:
    return base64.b64decode(json.loads(message)["body"]).decode()


def test_a_dispatch_larger_than_one_statement_is_written_in_batches_on_postgresql(
    pg_url: str, monkeypatch
) -> None:
    """A WebDataset shard job can take more ids in one dispatch than PostgreSQL's 65,535 bind
    parameters: each UPDATE names at most IN_BATCH ids (patched small here), and the dispatch
    still takes and releases all of them."""
    from sqlalchemy import event

    from janus_batch.db import get_engine
    from janus_batch.migrate import upgrade

    upgrade(pg_url)
    monkeypatch.setattr(lifecycle, "IN_BATCH", 7)
    with session_scope(pg_url) as session:
        _generate_job(session, "job_big", "m")
        rows = [{"idx": i, "input": {"prompt": f"p{i}"}} for i in range(40)]
        lifecycle.insert_items(session, "job_big", rows)
    in_lists: list[int] = []

    def count_ids(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.startswith("UPDATE items"):
            in_lists.append(sum(1 for key in parameters if key.startswith("id_")))

    engine = get_engine(pg_url)
    event.listen(engine, "before_cursor_execute", count_ids)
    try:
        with session_scope(pg_url) as session:
            chunks = lifecycle.take_dispatch(session, "job_big", chunk_size=10, window=3)
        taken = [item_id for chunk in chunks for item_id in chunk]
        with session_scope(pg_url) as session:
            assert lifecycle.release_dispatch(session, taken) == 30
    finally:
        event.remove(engine, "before_cursor_execute", count_ids)

    assert [len(c) for c in chunks] == [10, 10, 10]
    with session_scope(pg_url) as session:
        idx_of = dict(session.execute(select(Item.id, Item.idx)).all())
        assert session.scalar(select(func.count()).where(Item.enqueued_at.is_not(None))) == 0
    assert [idx_of[i] for i in taken] == list(range(30))  # idx order across the batches
    assert in_lists and max(in_lists) <= 7
    assert sum(in_lists) == 60  # 30 ids stamped, 30 released


def test_a_dispatch_reads_only_the_open_items_and_the_next_ones_by_index(sqlite_url: str) -> None:
    """take_dispatch counts a job's open items and takes its next undispatched ones; each of
    its SELECTs is a search of ix_items_job_dispatch, never a scan of the job's pending items
    nor a sort of them (each dispatch of a million-item job used to read all of them), and
    the ids a page's insert returns are its pending items in idx order."""
    from sqlalchemy import event

    from janus_batch.db import get_engine
    from janus_batch.migrate import upgrade

    upgrade(sqlite_url)
    with session_scope(sqlite_url) as session:
        _generate_job(session, "job_q", "m")
        rows = [
            {"idx": i, "input": {"prompt": f"p{i}"}, "error": "bad" if i == 3 else None}
            for i in range(300)
        ]
        ids = lifecycle.insert_items(session, "job_q", rows)
        pending = session.scalars(
            select(Item.id).where(Item.status == ItemStatus.PENDING).order_by(Item.idx)
        ).all()
        assert ids == pending and len(ids) == 299
        lifecycle.take_dispatch(session, "job_q", chunk_size=10, window=3)  # some are open
    selects: list[tuple[str, object]] = []

    def keep(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().startswith("SELECT"):
            selects.append((statement, parameters))

    engine = get_engine(sqlite_url)
    event.listen(engine, "before_cursor_execute", keep)
    try:
        with session_scope(sqlite_url) as session:
            chunks = lifecycle.take_dispatch(session, "job_q", chunk_size=10, window=5)
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    assert [len(c) for c in chunks] == [10, 10]  # 3 of 5 chunks were open
    assert len(selects) == 2
    with engine.connect() as conn:
        for statement, parameters in selects:
            found = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plan = " | ".join(row[3] for row in found)
            assert "SCAN items" not in plan and "TEMP B-TREE" not in plan, plan
            assert plan.count("ix_items_job_dispatch") == plan.count("items USING"), plan
