"""Adding items to a job in bulk and enqueuing them in chunks as they are inserted.

Used by the API for inline items and by the worker's expand task for S3 prefixes and
manifests, so a million-item source streams: rows are inserted page by page and each page's
chunks are enqueued at once, before the next page is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from celery import Celery
from sqlalchemy import insert, update

from janus_batch.db import session_scope
from janus_batch.models import Item, Job, utcnow
from janus_batch.queue import chunked, send_chunk
from janus_batch.states import ItemStatus

log = logging.getLogger(__name__)

INSERT_PAGE = 2000


@dataclass(frozen=True)
class NewItem:
    """An item ready to insert: its normalised input and optional custom id.

    With `error` set the item is inserted already `failed` (e.g. a malformed manifest line):
    it is counted in the job's `failed` and never enqueued.
    """

    input: dict[str, Any]
    custom_id: str | None = None
    error: str | None = None


def _pages(items: Iterable[NewItem], size: int) -> Iterator[list[NewItem]]:
    it = iter(items)
    while page := list(islice(it, size)):
        yield page


def add_items(
    database_url: str,
    app: Celery,
    job_id: str,
    kind: str,
    items: Iterable[NewItem],
    *,
    chunk_size: int,
    start_idx: int = 0,
    page_size: int = INSERT_PAGE,
) -> int:
    """Insert `items` page by page (bulk INSERT ... RETURNING), bump the job's total, and
    enqueue each page's chunks right after its commit. Returns how many were added.

    A crash between a commit and the enqueue leaves items pending with no message: the
    sweeper re-enqueues those, so nothing is lost.
    """
    idx = start_idx
    added = 0
    # Whole chunks per page, so only the last page ends in a partial chunk.
    page_size = max(chunk_size, page_size - page_size % chunk_size)
    for page in _pages(items, page_size):
        now = utcnow()
        rows = [
            {
                "job_id": job_id,
                "idx": idx + i,
                "custom_id": item.custom_id,
                "input": item.input,
                "status": (ItemStatus.FAILED if item.error else ItemStatus.PENDING).value,
                "attempts": 0,
                "enqueued_at": now,
                "error": item.error,
                "finished_at": now if item.error else None,
            }
            for i, item in enumerate(page)
        ]
        failed = sum(1 for item in page if item.error)
        with session_scope(database_url) as session:
            result = session.execute(
                insert(Item).returning(Item.id, sort_by_parameter_order=True), rows
            )
            ids = [row[0] for row, item in zip(result, page, strict=True) if not item.error]
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(total=Job.total + len(page), failed=Job.failed + failed)
            )
        for chunk in chunked(ids, chunk_size):
            send_chunk(app, kind, job_id, chunk)
        idx += len(page)
        added += len(page)
        log.info("job=%s added %d items (%d so far)", job_id, len(page), added)
    return added
