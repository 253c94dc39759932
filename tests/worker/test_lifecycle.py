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


def test_a_deferral_waits_uncounted_and_is_not_poison_unless_the_job_is_cancelled(
    ctx: Any,
) -> None:
    """A deferred item goes back to pending with retries + 1 (its attempt not counted as a
    poison attempt), the job marked waiting; in a job being cancelled it is cancelled and
    counted instead."""
    job_id = create_job(ctx, JobKind.GENERATE, ["a", "b"])
    ids = [row.id for row in get_items(ctx, job_id)]
    for _ in range(lifecycle.MAX_ATTEMPTS + 1):  # more deferrals than poison attempts
        [a] = claim(ctx, job_id, ids[:1])
        with session_scope(ctx.database_url) as session:
            moved = lifecycle.complete(
                session, [Outcome(a, ItemStatus.PENDING, error="waiting: down", delay=0)]
            )
        assert moved == {a.id: "pending"}
    row = get_items(ctx, job_id)[0]
    assert (row.status, row.retries, row.attempts) == ("pending", 4, 4)
    job = get_job(ctx, job_id)
    assert job.waiting_reason == "waiting: down" and job.succeeded + job.failed == 0

    [a] = claim(ctx, job_id, ids[:1])  # still claimable: deferrals are not poison
    with session_scope(ctx.database_url) as session:
        lifecycle.request_cancel(session, job_id)
        moved = lifecycle.complete(session, [Outcome(a, ItemStatus.PENDING, error="w", delay=0)])
    assert moved == {a.id: "cancelled"}
    job = get_job(ctx, job_id)
    assert job.cancelled == 2  # b (pending) by the cancel, a by its deferral: once each
