"""Item state changes made by a chunk, each a conditional UPDATE.

An item is claimed only if it is `pending` (or `running` under an expired lease, with
attempts left), and every later change names the attempt it belongs to
(`WHERE status = 'running' AND attempts = :attempts`). So a chunk delivered twice, or a
worker that lost its lease, can never count an item twice: counters are bumped by the
number of rows an UPDATE actually changed, in the same transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from janus_batch.models import Item, utcnow
from janus_batch.progress import bump_counts
from janus_batch.states import ItemStatus

MAX_ATTEMPTS = 3
"""Claims of one item before the sweeper gives up on it (poison-pill protection)."""


@dataclass(frozen=True)
class Claimed:
    """An item this worker owns for one attempt."""

    id: int
    idx: int
    attempts: int
    input: dict[str, Any]
    custom_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    """The end of one attempt of one item: its final status, result and error."""

    item: Claimed
    status: ItemStatus
    result: dict[str, Any] | None = None
    error: str | None = None


def claim_items(
    session: Session, job_id: str, item_ids: Sequence[int], lease_seconds: int
) -> list[Claimed]:
    """Claim the claimable items among `item_ids` (ordered by idx); others are skipped."""
    if not item_ids:
        return []
    now = utcnow()
    claimable = or_(
        Item.status == ItemStatus.PENDING,
        and_(
            Item.status == ItemStatus.RUNNING,
            Item.lease_until < now,
            Item.attempts < MAX_ATTEMPTS,
        ),
    )
    # Lock in id order, skipping rows another claimer holds (PostgreSQL; SQLite has one
    # writer at a time): duplicate deliveries never deadlock, the later one claims nothing.
    ids = session.scalars(
        select(Item.id)
        .where(Item.job_id == job_id, Item.id.in_(list(item_ids)), claimable)
        .order_by(Item.id)
        .with_for_update(skip_locked=True)
    ).all()
    if not ids:
        return []
    rows = session.execute(
        update(Item)
        .where(Item.id.in_(ids), claimable)
        .values(
            status=ItemStatus.RUNNING,
            attempts=Item.attempts + 1,
            lease_until=now + timedelta(seconds=lease_seconds),
            started_at=now,
            error=None,
        )
        .returning(Item.id, Item.idx, Item.attempts, Item.input, Item.custom_id)
        .execution_options(synchronize_session=False)
    ).all()
    claimed = [Claimed(r.id, r.idx, r.attempts, r.input, r.custom_id) for r in rows]
    return sorted(claimed, key=lambda c: c.idx)


def _finish(session: Session, item: Claimed, values: dict[str, Any]) -> bool:
    result = session.execute(
        update(Item)
        .where(
            Item.id == item.id,
            Item.status == ItemStatus.RUNNING,
            Item.attempts == item.attempts,
        )
        .values(lease_until=None, finished_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def complete_items(session: Session, job_id: str, outcomes: Iterable[Outcome]) -> Counter[str]:
    """Record outcomes; bump the job's counters by the rows actually changed. Returns them."""
    counts: Counter[str] = Counter()
    for outcome in outcomes:
        values = {"status": outcome.status, "result": outcome.result, "error": outcome.error}
        if _finish(session, outcome.item, values):
            counts[outcome.status] += 1
    bump_counts(
        session,
        job_id,
        succeeded=counts[ItemStatus.SUCCEEDED],
        failed=counts[ItemStatus.FAILED],
        cancelled=counts[ItemStatus.CANCELLED],
    )
    return counts


def extend_lease(session: Session, items: Iterable[Claimed], lease_seconds: int) -> set[int]:
    """Push the lease of items still owned by this attempt `lease_seconds` into the future;
    returns the ids still owned (the rows the UPDATE matched). An id missing from it was
    finished, or taken back by the sweeper: this worker must not run it any more."""
    return extend_leases(session, {item.id: item.attempts for item in items}, lease_seconds)


def extend_leases(session: Session, owned: Mapping[int, int], lease_seconds: int) -> set[int]:
    """`extend_lease` by {item id: attempts}; returns the ids still owned."""
    by_attempt: dict[int, list[int]] = {}
    for item_id, attempts in owned.items():
        by_attempt.setdefault(attempts, []).append(item_id)
    until = utcnow() + timedelta(seconds=lease_seconds)
    still: set[int] = set()
    for attempts, ids in by_attempt.items():
        rows = session.execute(
            update(Item)
            .where(
                Item.id.in_(ids),
                Item.status == ItemStatus.RUNNING,
                Item.attempts == attempts,
            )
            .values(lease_until=until)
            .returning(Item.id)
            .execution_options(synchronize_session=False)
        ).scalars()
        still.update(rows)
    return still


def cancel_pending(session: Session, job_id: str, item_ids: Sequence[int]) -> int:
    """Cancel the still-pending items among `item_ids` (a chunk of a cancelling job)."""
    if not item_ids:
        return 0
    result = session.execute(
        update(Item)
        .where(
            Item.job_id == job_id,
            Item.id.in_(list(item_ids)),
            Item.status == ItemStatus.PENDING,
        )
        .values(status=ItemStatus.CANCELLED, error="job cancelled", finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    bump_counts(session, job_id, cancelled=result.rowcount)
    return result.rowcount


def cancel_all_pending(session: Session, job_id: str) -> int:
    """Cancel every still-pending item of a cancelling job (those inserted after the cancel,
    or whose chunk message was lost), bumping its counter."""
    result = session.execute(
        update(Item)
        .where(Item.job_id == job_id, Item.status == ItemStatus.PENDING)
        .values(status=ItemStatus.CANCELLED, error="job cancelled", finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    bump_counts(session, job_id, cancelled=result.rowcount)
    return result.rowcount
