"""Adding items to a job in bulk, and dispatching them to the broker a window at a time.

Used by the API for inline items and by the worker's expand task for S3 prefixes and
manifests, so a million-item source streams: rows are inserted page by page. A job keeps at
most `JANUS_BATCH_DISPATCH_WINDOW` chunk messages open (queued or running); each chunk that
ends releases the job's next one, so the queue interleaves jobs round-robin, a small job
never waits for a big one to drain, and a broker restart loses little (SQL remembers the
rest).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from janus_batch import fleet, lifecycle, shards
from janus_batch.db import session_scope
from janus_batch.models import Item, Job
from janus_batch.queue import chunk_queue, chunked, send_chunk
from janus_batch.settings import Settings

log = logging.getLogger(__name__)

INSERT_PAGE = 2000
"""Items inserted (and their chunks enqueued) per transaction."""


@dataclass(frozen=True)
class NewItem:
    """An item ready to insert: its normalised input and optional custom id.

    With `error` set the item is inserted already `failed` (e.g. a malformed manifest line):
    it is counted in the job's `failed` and never enqueued.
    """

    input: dict[str, Any]
    custom_id: str | None = None
    error: str | None = None


def add_items(
    database_url: str,
    app: Celery,
    job_id: str,
    kind: str,
    items: Iterable[NewItem],
    *,
    chunk_size: int,
    window: int,
    start_idx: int = 0,
    page_size: int = INSERT_PAGE,
) -> int:
    """Insert `items` page by page (`lifecycle.insert_items`: one bulk INSERT ... RETURNING
    and the job's total bumped, in one transaction), and after each page dispatch chunks up
    to the job's window (`dispatch`). Returns how many were added.

    A crash between a commit and the enqueue leaves items pending: dispatched ones are sent
    again by the sweeper (their message is lost), undispatched ones by the next dispatch.
    """
    idx = start_idx
    for page in chunked(items, page_size):
        rows = [
            {"idx": idx + i, "custom_id": item.custom_id, "input": item.input, "error": item.error}
            for i, item in enumerate(page)
        ]
        with session_scope(database_url) as session:
            lifecycle.insert_items(session, job_id, rows)
        dispatch(database_url, app, job_id, kind, chunk_size=chunk_size, window=window)
        idx += len(page)
        log.info("job=%s added %d items (%d so far)", job_id, len(page), idx - start_idx)
    return idx - start_idx


def insert_all(
    session: Session, job_id: str, items: Iterable[NewItem], *, page_size: int = INSERT_PAGE
) -> int:
    """Insert `items` (idx from 0) in pages inside the caller's transaction, so a job and
    all its inline items commit together; nothing is dispatched. Returns how many."""
    n = 0
    for page in chunked(items, page_size):
        rows = [
            {"idx": n + i, "custom_id": item.custom_id, "input": item.input, "error": item.error}
            for i, item in enumerate(page)
        ]
        lifecycle.insert_items(session, job_id, rows)
        n += len(page)
    return n


def window_for(settings: Settings, kind: str, model: str) -> int:
    """A job's window: JANUS_BATCH_DISPATCH_WINDOW chunks per live worker consuming its
    queue (of its kind and model), at least one worker's worth, so one big job can keep
    every worker of its model busy while any other job still finds the broker short."""
    queue = chunk_queue(kind, model, settings.resolved_default_model())
    workers = fleet.consumers_of(settings.redis_url, settings.queue_prefix, queue)
    return settings.dispatch_window * max(1, workers)


def dispatch_next(settings: Settings, app: Celery, job_id: str, kind: str, model: str) -> int:
    """`dispatch` with the settings' chunk size and the job's window (`window_for`)."""
    return dispatch(
        settings.resolved_database_url(),
        app,
        job_id,
        kind,
        chunk_size=settings.chunk_size,
        window=window_for(settings, kind, model),
    )


def dispatch(
    database_url: str, app: Celery, job_id: str, kind: str, *, chunk_size: int, window: int
) -> int:
    """Send the job's next chunks, so that `window` of them are open (in the broker or
    running): the fair-share rule. Called when items are added and when a chunk ends.
    A job writing WebDataset shards sends a shard's worth of items per chunk instead of
    `chunk_size` (`shards.chunk_items`). Each goes to the queue of the job's model; Flower
    names it after the job's label (and model). Returns how many items were sent."""
    with session_scope(database_url) as session:
        row = session.execute(
            select(Job.params, Job.label, Job.model).where(Job.id == job_id)
        ).first()
        if row is None:  # deleted meanwhile
            return 0
        params, label, model = row
        chunk_size = shards.chunk_items(params, chunk_size)
        chunks = lifecycle.take_dispatch(session, job_id, chunk_size=chunk_size, window=window)
    for n, chunk in enumerate(chunks):
        try:
            send_chunk(app, kind, job_id, chunk, label, model)
        except Exception:  # the broker is away: what was not sent is undispatched again
            unsent = [item_id for rest in chunks[n:] for item_id in rest]
            with session_scope(database_url) as session:
                lifecycle.release_dispatch(session, unsent)
            raise
    return sum(map(len, chunks))


def iter_items(
    database_url: str,
    job_id: str,
    *,
    statuses: Sequence[str] | None = None,
    page_size: int = 1000,
    on_page: Callable[[Session], None] | None = None,
) -> Iterator[Item]:
    """A job's items (of `statuses`, or all) in idx order, read by keyset pagination: one
    page in memory and one short transaction per page, so millions of rows stream.
    `on_page(session)` runs in each page's transaction (a long reader shows it is alive)."""
    last = -1
    while True:
        query = select(Item).where(Item.job_id == job_id, Item.idx > last)
        if statuses is not None:
            query = query.where(Item.status.in_(list(statuses)))
        with session_scope(database_url) as session:
            page = list(session.scalars(query.order_by(Item.idx).limit(page_size)))
            if on_page is not None:
                on_page(session)
        yield from page
        if len(page) < page_size:
            return
        last = page[-1].idx
