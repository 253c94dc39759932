"""Helpers for API tests: submit a job, and play the worker's part directly in SQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from janus_batch.db import session_scope
from janus_batch.models import Item, Job, utcnow
from janus_batch.states import ItemStatus


def caption_job(client: TestClient, n: int = 3, **extra: Any) -> dict[str, Any]:
    """Submit a caption job of `n` inline images; returns the job."""
    items = [{"image": f"s3://bucket/img{i}.jpg", "custom_id": f"c{i}"} for i in range(n)]
    response = client.post("/v1/jobs", json={"kind": "caption", "items": items, **extra})
    assert response.status_code == 202, response.text
    return response.json()


def finish_items(
    database_url: str,
    job_id: str,
    idxs: list[int],
    status: ItemStatus = ItemStatus.SUCCEEDED,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """Play the worker: mark items final and bump the job's counters (job -> running)."""
    now = utcnow()
    with session_scope(database_url) as session:
        session.execute(
            update(Item)
            .where(Item.job_id == job_id, Item.idx.in_(idxs))
            .values(
                status=status,
                result=result,
                error=error,
                attempts=1,
                started_at=now,
                finished_at=now,
            )
        )
        job = session.scalar(select(Job).where(Job.id == job_id))
        assert job is not None
        setattr(job, str(status), getattr(job, str(status)) + len(idxs))
        job.status = "running"
        job.started_at = job.started_at or now - timedelta(seconds=10)


def set_item_status(database_url: str, job_id: str, idxs: list[int], status: str) -> None:
    """Set items' status without touching counters (e.g. running)."""
    with session_scope(database_url) as session:
        session.execute(
            update(Item).where(Item.job_id == job_id, Item.idx.in_(idxs)).values(status=status)
        )


def set_job(database_url: str, job_id: str, **values: Any) -> None:
    """Overwrite job columns (e.g. status="succeeded")."""
    with session_scope(database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
