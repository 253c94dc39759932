"""Claims and completions are conditional UPDATEs: nothing is done or counted twice."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from janus_batch import lifecycle
from janus_batch.db import session_scope
from janus_batch.lifecycle import Outcome
from janus_batch.models import Item, utcnow
from janus_batch.states import ItemStatus, JobKind
from tests.worker.helpers import create_job, get_items, get_job


def expire(ctx: Any, ids: list[int]) -> None:
    with session_scope(ctx.database_url) as session:
        session.execute(
            update(Item).where(Item.id.in_(ids)).values(lease_until=utcnow() - timedelta(1))
        )


def claim(ctx: Any, job_id: str, ids: list[int]) -> list[Any]:
    with session_scope(ctx.database_url) as session:
        return lifecycle.claim(session, job_id, ids, lease_seconds=60)


def test_claim_skips_leased_and_final_items(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["a", "b", "c"])
    ids = [row.id for row in get_items(ctx, job_id)]

    first = claim(ctx, job_id, ids)
    assert [(c.idx, c.attempts) for c in first] == [(0, 1), (1, 1), (2, 1)]
    assert claim(ctx, job_id, ids) == []  # running under a live lease
    assert claim(ctx, "job_other", ids) == []  # ids of another job

    rows = get_items(ctx, job_id)
    assert {r.status for r in rows} == {ItemStatus.RUNNING}
    assert all(r.lease_until is not None and r.started_at is not None for r in rows)

    with session_scope(ctx.database_url) as session:
        outcome = Outcome(first[0], ItemStatus.SUCCEEDED, result={"images": []})
        assert lifecycle.complete(session, [outcome]) == {first[0].id: ItemStatus.SUCCEEDED}
    expire(ctx, ids)
    second = claim(ctx, job_id, ids)  # expired leases are claimed again, final ones are not
    assert [(c.idx, c.attempts) for c in second] == [(1, 2), (2, 2)]

    with session_scope(ctx.database_url) as session:  # the first attempt lost its lease
        stale = [Outcome(c, ItemStatus.FAILED, error="late") for c in first]
        assert lifecycle.complete(session, stale) == {}
    job = get_job(ctx, job_id)
    assert (job.succeeded, job.failed) == (1, 0)

    expire(ctx, ids)
    assert [c.attempts for c in claim(ctx, job_id, ids)] == [3, 3]
    expire(ctx, ids)
    assert claim(ctx, job_id, ids) == []  # out of attempts: the sweeper retires them
