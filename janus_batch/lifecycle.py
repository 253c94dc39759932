"""The job and item lifecycle: the only code that writes job status, job counters, and item
status, lease and attempts (and the only INSERT/UPDATE/DELETE on `jobs` and `items`).

Every function is one transition, named after it. Each is a conditional UPDATE whose allowed
source states come from the transition table in `janus_batch.states`, works on many rows per
statement, and returns the rows that actually moved; counters are bumped by those rows in the
same transaction. So a redelivered message, a worker that lost its lease or a sweep racing a
worker can never move an item twice or count it twice. Callers read and decide, then call a
transition inside their own transaction (`session_scope`).

Lock order, everywhere: item rows first, then job rows in id order, so a claim, a cancel and a
completion cannot deadlock on PostgreSQL.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    CursorResult,
    DateTime,
    Integer,
    Result,
    String,
    Table,
    Text,
    and_,
    case,
    column,
    delete,
    func,
    insert,
    or_,
    select,
    update,
    values,
)
from sqlalchemy.orm import Session

from janus_batch.expiry import expired_error
from janus_batch.models import Item, Job, utcnow
from janus_batch.states import (
    JOB_FINAL,
    JOB_LIVE,
    JOB_RETRYABLE,
    STOPPED_ITEMS,
    ItemStatus,
    JobStatus,
    item_sources,
    job_sources,
)

MAX_ATTEMPTS = 3
"""Claims of one item before the sweeper gives up on it (poison-pill protection); claims
that ended in a deferral (`Item.retries`) do not count."""
WAITING = "waiting"
"""Prefix of a deferred item's error: what it waits out, not why it failed."""
CANCEL_ERROR = "job cancelled"
POISON_PREFIX = "worker lost "
POISON_ERROR = (
    f"{POISON_PREFIX}{MAX_ATTEMPTS} times while processing this item "
    "(the process was killed or crashed)"
)
ALL_FAILED_ERROR = "all {n} items failed (see errors.jsonl)"
"""The error a job gets at its end when no item succeeded (`all_failed_error`): a verdict
on its items that a retry clears, unlike an error of its own (its source could not be read)."""


def all_failed_error(n: int) -> str:
    """The error of a job whose `n` items all failed."""
    return ALL_FAILED_ERROR.format(n=n)


@dataclass(frozen=True)
class Claimed:
    """An item this worker owns for one attempt."""

    id: int
    job_id: str
    idx: int
    attempts: int
    input: dict[str, Any]
    custom_id: str | None = None
    retries: int = 0
    """Earlier attempts that ended in a deferral."""


@dataclass(frozen=True)
class Outcome:
    """The end of one attempt of one item: its final status, result and error; or, with
    status `pending`, a deferral: a transient error (storage or an input host down) sends the
    item back to wait `delay` seconds, the attempt not counted against MAX_ATTEMPTS."""

    item: Claimed
    status: ItemStatus
    result: dict[str, Any] | None = None
    error: str | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class Expired:
    """An item whose lease ran out, and what the sweeper made of it."""

    id: int
    job_id: str
    idx: int
    attempts: int
    status: ItemStatus


def _item_from(sources: Iterable[ItemStatus], target: ItemStatus) -> list[str]:
    """`sources`, checked against the transition table: every one may move to `target`."""
    wanted = frozenset(sources)
    allowed = item_sources(target)
    if not wanted <= allowed:
        raise ValueError(f"items may not move {sorted(wanted - allowed)} -> {target}")
    return sorted(wanted)


def _job_from(target: JobStatus, among: Iterable[JobStatus] | None = None) -> list[str]:
    allowed = job_sources(target)
    wanted = allowed if among is None else frozenset(among)
    if not wanted <= allowed:
        raise ValueError(f"jobs may not move {sorted(wanted - allowed)} -> {target}")
    return sorted(wanted)


# --- jobs -------------------------------------------------------------------------------


def create_job(session: Session, **fields: Any) -> Job:
    """Insert a new `queued` job (flushed, so an idempotency-key clash raises here)."""
    job = Job(status=JobStatus.QUEUED.value, expanded=False, **fields)
    session.add(job)
    session.flush()
    return job


def bump_counts(
    session: Session,
    counts: Mapping[str, Counter[str]],
    waiting: Mapping[str, str | None] | None = None,
) -> None:
    """Add to the final-state counters of each job (job id -> item status -> n), in id
    order, one UPDATE per job. `waiting` (job id -> reason) marks jobs whose items now wait
    out a transient error (waiting since the first of them); a job with a success and no new
    wait is cleared (whatever it waited on is back)."""
    now = utcnow()
    waiting = waiting or {}
    for job_id in sorted(set(counts) | set(waiting)):
        n = counts.get(job_id, Counter())
        succeeded, failed, cancelled, expired = (
            n[ItemStatus.SUCCEEDED],
            n[ItemStatus.FAILED],
            n[ItemStatus.CANCELLED],
            n[ItemStatus.EXPIRED],
        )
        extra: dict[str, Any] = {}
        if job_id in waiting:
            extra = {
                "waiting_since": func.coalesce(Job.waiting_since, now),
                "waiting_reason": waiting[job_id],
            }
        elif succeeded:
            extra = {"waiting_since": None, "waiting_reason": None}
        if not (succeeded or failed or cancelled or expired or extra):
            continue
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                succeeded=Job.succeeded + succeeded,
                failed=Job.failed + failed,
                cancelled=Job.cancelled + cancelled,
                expired=Job.expired + expired,
                updated_at=now,
                **extra,
            )
        )


def start_running(session: Session, job_ids: Iterable[str]) -> list[str]:
    """queued -> running, stamping started_at; returns the jobs that moved."""
    ids = sorted(set(job_ids))
    if not ids:
        return []
    now = utcnow()
    source = _job_from(JobStatus.RUNNING, {JobStatus.QUEUED})
    return list(
        session.scalars(
            update(Job)
            .where(Job.id.in_(ids), Job.status.in_(source))
            .values(status=JobStatus.RUNNING, started_at=now, updated_at=now)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
    )


IN_BATCH = 5000
"""Most ids one statement names in an `IN (...)` list: PostgreSQL (libpq) takes at most
65,535 bind parameters per statement, and a dispatch of WebDataset shards can take more ids
than that (10,000 items per chunk times the window)."""


def _id_batches(ids: Sequence[int]) -> Iterator[list[int]]:
    """`ids` in runs of at most IN_BATCH (one statement each)."""
    for start in range(0, len(ids), IN_BATCH):
        yield list(ids[start : start + IN_BATCH])


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE matched. Session.execute is typed as returning a Result, but for an
    UPDATE it is a CursorResult, which has the rowcount."""
    return cast(CursorResult[Any], result).rowcount


def start_finalizing(session: Session, job_id: str) -> bool:
    """-> finalizing, if every item is final and expansion is over. True for exactly one
    caller: that caller enqueues the finalize task."""
    moved = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(_job_from(JobStatus.FINALIZING)),
            Job.expanded.is_(True),
            Job.done >= Job.total,
        )
        .values(status=JobStatus.FINALIZING, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _rowcount(moved) == 1


def finish(
    session: Session, job_id: str, status: JobStatus, error: str | None, *, replace: bool = False
) -> bool:
    """finalizing -> succeeded | failed | cancelled | expired; an error already recorded is
    kept, unless `replace` (a finalize that failed records an error that says all)."""
    now = utcnow()
    moved = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_job_from(status, {JobStatus.FINALIZING})))
        .values(
            status=status,
            error=error if replace else func.coalesce(Job.error, error),
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return _rowcount(moved) == 1


def start_deleting(session: Session, job_id: str) -> bool:
    """succeeded | failed | cancelled -> deleting, committed before any of the job's objects
    is removed, so a retry or a cancel racing the deletion is refused (a job already
    deleting is touched: its deletion is alive). True if the job is deleting now."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_job_from(JobStatus.DELETING)))
        .values(status=JobStatus.DELETING, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    touch(session, job_id, only=JobStatus.DELETING)
    return session.scalar(select(Job.status).where(Job.id == job_id)) == JobStatus.DELETING


def delete_job(session: Session, job_id: str) -> bool:
    """Remove a `deleting` job and all its items (their rows: the caller removed the stored
    objects first). True if the job was deleting and is gone."""
    gone = session.execute(
        delete(Job)
        .where(Job.id == job_id, Job.status == JobStatus.DELETING)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(gone) != 1:
        return False
    session.execute(
        delete(Item).where(Item.job_id == job_id).execution_options(synchronize_session=False)
    )
    return True


def request_cancel(session: Session, job_id: str) -> tuple[bool, int]:
    """queued | running -> cancelling, its pending items cancelled (counted). Returns
    (whether the job is cancelling now, pending items cancelled by this call)."""
    n = cancel_pending(session, job_id)
    moved = _rowcount(
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(_job_from(JobStatus.CANCELLING)))
            .values(status=JobStatus.CANCELLING, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    )
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return bool(moved) or status == JobStatus.CANCELLING, n


def expire_job(session: Session, job_id: str, now: datetime) -> tuple[bool, int]:
    """queued | running past its `expires_at` -> expiring, its pending items expired (counted,
    their error naming the window): running chunks drain as for a cancel, each running item
    ending `expired` before its next pass. Returns (whether this call moved the job, pending
    items expired). Nothing moves for a job that is not live or not past its deadline."""
    overdue = (
        Job.id == job_id,
        Job.status.in_(_job_from(JobStatus.EXPIRING)),
        Job.expires_at <= now,
    )
    row = session.execute(select(Job.expires_at, Job.created_at, Job.retried_at).where(*overdue))
    found = row.first()
    if found is None:
        return False, 0
    error = expired_error(found.expires_at, found.retried_at or found.created_at)
    n = _end_pending(session, job_id, ItemStatus.EXPIRED, error)
    moved = session.execute(
        update(Job)
        .where(*overdue)
        .values(status=JobStatus.EXPIRING, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(moved) == 1, n


def overdue_jobs(session: Session, now: datetime, limit: int) -> list[str]:
    """Live jobs past their deadline, earliest first (the `expires_at` index), at most
    `limit`: the ones `expire_job` moves."""
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.expires_at <= now, Job.status.in_(sorted(JOB_LIVE)))
            .order_by(Job.expires_at)
            .limit(limit)
        )
    )


def restart(session: Session, job_id: str, window: timedelta | None = None) -> bool:
    """succeeded | failed | expired -> running, once a retry sent items back
    (`retry_failed`, same transaction): finished_at cleared, started_at now with the items
    processed so far in `processed_before` (the rate counts the new run alone), an all-failed
    verdict cleared (an error of the job's own, such as an unreadable source, is kept),
    retry_count + 1, and a fresh completion `window` from now (None: the job never
    expires). False if the job was not in one of those states (the caller rolls back)."""
    now = utcnow()
    moved = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(_job_from(JobStatus.RUNNING, JOB_RETRYABLE)),
        )
        .values(
            status=JobStatus.RUNNING,
            error=case((Job.error.like(ALL_FAILED_ERROR.format(n="%")), None), else_=Job.error),
            started_at=now,
            finished_at=None,
            processed_before=Job.succeeded + Job.failed,
            retry_count=Job.retry_count + 1,
            retried_at=now,
            expires_at=now + window if window is not None else None,
            waiting_since=None,
            waiting_reason=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return _rowcount(moved) == 1


def queue_webhook(session: Session, job_id: str) -> int | None:
    """A final job with a webhook: its delivery of this terminal status is pending, the last
    one's record cleared. Returns the delivery's number (the job's retry count: one
    delivery per terminal status), or None if the job has no webhook or is not final."""
    return session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.webhook_url.is_not(None), Job.status.in_(JOB_FINAL))
        .values(
            webhook_state="pending",
            webhook_attempts=0,
            webhook_last_at=None,
            webhook_response=None,
            webhook_error=None,
        )
        .returning(Job.retry_count)
        .execution_options(synchronize_session=False)
    )


def record_webhook(
    session: Session,
    job_id: str,
    event: int,
    *,
    state: str,
    attempts: int,
    response: int | None,
    error: str | None,
) -> bool:
    """How attempt `attempts` of delivery `event` went; False (nothing written) if the job
    was retried since (a later delivery owns the record) or already records a later attempt
    (a redelivered message of an earlier one)."""
    moved = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.retry_count == event,
            Job.status.in_(JOB_FINAL),
            Job.webhook_attempts <= attempts,
        )
        .values(
            webhook_state=state,
            webhook_attempts=attempts,
            webhook_last_at=utcnow(),
            webhook_response=response,
            webhook_error=error,
        )
        .execution_options(synchronize_session=False)
    )
    return _rowcount(moved) == 1


def end_expansion(session: Session, job_id: str, error: str | None = None) -> None:
    """Every item of the job is inserted (its source read, or failed with `error`)."""
    values: dict[str, Any] = {"expanded": True, "updated_at": utcnow()}
    if error:
        values["error"] = error
    session.execute(update(Job).where(Job.id == job_id).values(**values))


def touch(session: Session, job_id: str, *, only: JobStatus | None = None) -> None:
    """Stamp updated_at (a long expand or finalize shows the sweeper it is alive)."""
    condition = [Job.id == job_id] + ([Job.status == only] if only is not None else [])
    session.execute(update(Job).where(*condition).values(updated_at=utcnow()))


def take_stale_jobs(
    session: Session, condition: ColumnElement[bool], cutoff: datetime, now: datetime, limit: int
) -> list[str]:
    """Jobs matching `condition` idle since `cutoff`, touched so the next sweep waits; the
    ids this call touched (a concurrent sweep gets the others)."""
    ids = session.scalars(
        select(Job.id).where(condition, Job.updated_at < cutoff).order_by(Job.id).limit(limit)
    ).all()
    if not ids:
        return []
    return list(
        session.scalars(
            update(Job)
            .where(Job.id.in_(ids), condition, Job.updated_at < cutoff)
            .values(updated_at=now)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
    )


# --- items ------------------------------------------------------------------------------


def insert_items(session: Session, job_id: str, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Add a page of items to a job (each row: idx, custom_id, input, error); rows with an
    error are born `failed` and counted. Pending items are not yet dispatched (no message
    names them: `take_dispatch` hands them out a window at a time). Bumps the job's total;
    returns the new pending ids in idx order."""
    if not rows:
        return []
    now = utcnow()
    records = [
        {
            "job_id": job_id,
            "idx": row["idx"],
            "custom_id": row.get("custom_id"),
            "input": row["input"],
            "status": (ItemStatus.FAILED if row.get("error") else ItemStatus.PENDING).value,
            "attempts": 0,
            "enqueued_at": None,
            "error": row.get("error"),
            "finished_at": now if row.get("error") else None,
        }
        for row in rows
    ]
    # one executemany, no RETURNING: an INSERT ... RETURNING in row order runs one row per
    # statement on SQLite; the page's ids are read back by its idx range instead
    session.execute(insert(cast(Table, Item.__table__)), records)
    wanted = {row["idx"] for row in rows if not row.get("error")}
    ids = []
    if wanted:
        found = session.execute(
            select(Item.idx, Item.id)
            .where(Item.job_id == job_id, Item.idx.between(min(wanted), max(wanted)))
            .order_by(Item.idx)
        )
        ids = [item_id for idx, item_id in found if idx in wanted]
    failed = len(rows) - len(wanted)
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(total=Job.total + len(rows), failed=Job.failed + failed, updated_at=now)
    )
    return ids


def dispatchable(now: datetime) -> ColumnElement[bool]:
    """Items a dispatch may send: pending, named by no message, and not deferred past `now`."""
    return and_(
        Item.status == ItemStatus.PENDING,
        Item.enqueued_at.is_(None),
        or_(Item.not_before.is_(None), Item.not_before <= now),
    )


def _poison_left() -> ColumnElement[bool]:
    """The item still has attempts left: claims that ended in a deferral do not count."""
    return Item.attempts - Item.retries - Item.attempt_base < MAX_ATTEMPTS


def take_dispatch(
    session: Session, job_id: str, *, chunk_size: int, window: int, now: datetime | None = None
) -> list[list[int]]:
    """Undispatched pending items of the job, in idx order, stamped dispatched (enqueued_at),
    so that at most `window` chunks of the job are open (dispatched pending, or running);
    returns them as chunks to send. A concurrent call gets other items (or none)."""
    # two counts, each a range of ix_items_job_dispatch: bounded by the window, never a scan
    # of the job's pending items (an OR of the two would read them all)
    running = select(func.count()).where(Item.job_id == job_id, Item.status == ItemStatus.RUNNING)
    sent = select(func.count()).where(
        Item.job_id == job_id, Item.status == ItemStatus.PENDING, Item.enqueued_at.is_not(None)
    )
    open_items = session.execute(select(running.scalar_subquery(), sent.scalar_subquery())).one()
    room = window - -(-sum(open_items) // chunk_size)
    if room <= 0:
        return []
    undispatched = and_(Item.job_id == job_id, dispatchable(now or utcnow()))
    ids = session.scalars(
        select(Item.id)
        .where(undispatched)
        .order_by(Item.idx)
        .limit(room * chunk_size)
        .with_for_update(skip_locked=True)
    ).all()
    if not ids:
        return []
    stamp = now or utcnow()
    taken = sorted(
        row
        for batch in _id_batches(ids)
        for row in session.execute(
            update(Item)
            .where(Item.id.in_(batch), undispatched)
            .values(enqueued_at=stamp)
            .returning(Item.idx, Item.id)
            .execution_options(synchronize_session=False)
        ).all()
    )
    ordered = [item_id for _, item_id in taken]
    return [ordered[i : i + chunk_size] for i in range(0, len(ordered), chunk_size)]


def release_dispatch(session: Session, item_ids: Sequence[int]) -> int:
    """Pending items whose chunk message could not be sent become undispatched again (the
    next dispatch, or the sweeper's, sends them). Returns how many."""
    return sum(
        _rowcount(
            session.execute(
                update(Item)
                .where(Item.id.in_(batch), Item.status == ItemStatus.PENDING)
                .values(enqueued_at=None)
                .execution_options(synchronize_session=False)
            )
        )
        for batch in _id_batches(item_ids)
    )


def claim(
    session: Session, job_id: str, item_ids: Sequence[int], lease_seconds: int
) -> list[Claimed]:
    """pending (or running under an expired lease, with attempts left) -> running, with a
    lease and attempt + 1; the job queued -> running. Nothing is claimed of a job past its
    deadline (`expire_job` ends its items). Returns the claimed items by idx."""
    if not item_ids:
        return []
    now = utcnow()
    in_time = select(Job.id).where(
        Job.id == job_id, or_(Job.expires_at.is_(None), Job.expires_at > now)
    )
    claimable = and_(
        or_(
            Item.status.in_(_item_from({ItemStatus.PENDING}, ItemStatus.RUNNING)),
            and_(
                Item.status == ItemStatus.RUNNING,
                Item.lease_until < now,
                _poison_left(),
            ),
        ),
        Item.job_id.in_(in_time),
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
        .returning(Item.id, Item.idx, Item.attempts, Item.input, Item.custom_id, Item.retries)
        .execution_options(synchronize_session=False)
    ).all()
    if rows:
        start_running(session, [job_id])
    claimed = [
        Claimed(r.id, job_id, r.idx, r.attempts, r.input, r.custom_id, r.retries) for r in rows
    ]
    return sorted(claimed, key=lambda c: c.idx)


def complete(session: Session, outcomes: Sequence[Outcome]) -> dict[int, str]:
    """running (this attempt) -> succeeded | failed | cancelled, for a whole pass of outcomes
    of any jobs in one statement; counters bumped by the rows that moved; deferrals (status
    pending) go back to wait (`defer`). Returns the items that moved: {item id: new status}
    (an outcome of a lost attempt is not among them)."""
    if not outcomes:
        return {}
    for outcome in outcomes:
        _item_from({ItemStatus.RUNNING}, outcome.status)
    now = utcnow()
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    waiting: dict[str, str | None] = {}
    deferred = [o for o in outcomes if o.status == ItemStatus.PENDING]
    moved_back = _defer_items(session, deferred, now, counts, waiting) if deferred else {}
    outcomes = [o for o in outcomes if o.status != ItemStatus.PENDING]
    if not outcomes:
        bump_counts(session, counts, waiting)  # job rows last, in id order
        return moved_back
    job_of = {o.item.id: o.item.job_id for o in outcomes}
    v = (
        values(
            column("id", BigInteger),
            column("attempts", Integer),
            column("status", String),
            column("result", JSON),
            column("error", Text),
            name="v",
        )
        .data(
            [
                (o.item.id, o.item.attempts, o.status.value, o.result, o.error)
                for o in sorted(outcomes, key=lambda o: o.item.id)
            ]
        )
        .cte("v")
    )
    moved = session.execute(
        update(Item)
        .where(
            Item.id == v.c.id,
            Item.attempts == v.c.attempts,
            Item.status == ItemStatus.RUNNING,
        )
        .values(
            status=v.c.status,
            result=v.c.result,
            error=v.c.error,
            lease_until=None,
            finished_at=now,
        )
        .returning(Item.id, Item.status)
        .execution_options(synchronize_session=False)
    ).all()
    for item_id, status in moved:
        counts[job_of[item_id]][status] += 1
    bump_counts(session, counts, waiting)  # job rows last, in id order
    return {**moved_back, **{item_id: status for item_id, status in moved}}


def _defer_items(
    session: Session,
    outcomes: Sequence[Outcome],
    now: datetime,
    counts: dict[str, Counter[str]],
    waiting: dict[str, str | None],
) -> dict[int, str]:
    """Deferrals (item rows only; the caller updates the jobs): running (this attempt) ->
    pending, undispatched until `now + delay`, `retries` + 1 (so the attempt is not poison),
    the error kept as what it waits on, the job noted in `waiting`; an item of a job being
    stopped ends as the stop says instead (cancelled or expired, counted in `counts`).
    Returns {item id: new status}."""
    v = (
        values(
            column("id", BigInteger),
            column("attempts", Integer),
            column("error", Text),
            column("not_before", DateTime(timezone=True)),
            name="d",
        )
        .data(
            [
                (o.item.id, o.item.attempts, o.error, now + timedelta(seconds=o.delay))
                for o in sorted(outcomes, key=lambda o: o.item.id)
            ]
        )
        .cte("d")
    )
    mine = and_(Item.id == v.c.id, Item.attempts == v.c.attempts)
    stopped: dict[int, str] = {}
    for target, of_job, reason in _stops(session, {o.item.job_id for o in outcomes}):
        rows = session.execute(
            update(Item)
            .where(mine, Item.status.in_(_item_from({ItemStatus.RUNNING}, target)), of_job)
            .values(status=target, error=reason, lease_until=None, finished_at=now)
            .returning(Item.id, Item.job_id)
            .execution_options(synchronize_session=False)
        ).all()
        for item_id, job_id in rows:
            stopped[item_id] = target.value
            counts[job_id][target] += 1
    moved = session.execute(
        update(Item)
        .where(mine, Item.status.in_(_item_from({ItemStatus.RUNNING}, ItemStatus.PENDING)))
        .values(
            status=ItemStatus.PENDING,
            retries=Item.retries + 1,
            not_before=v.c.not_before,
            error=v.c.error,
            lease_until=None,
            enqueued_at=None,
        )
        .returning(Item.id, Item.job_id, Item.error)
        .execution_options(synchronize_session=False)
    ).all()
    for _, job_id, error in moved:
        waiting[job_id] = error
    return {**stopped, **{item_id: ItemStatus.PENDING.value for item_id, _, _ in moved}}


def _stops(
    session: Session, job_ids: Collection[str]
) -> list[tuple[ItemStatus, ColumnElement[bool], str]]:
    """For those of `job_ids` being stopped: what their running items end as (`STOPPED_ITEMS`),
    a condition on `Item.job_id`, and the error: one entry for every cancelled job, one per
    expired job (its error names its window)."""
    rows = session.execute(
        select(Job.id, Job.status, Job.expires_at, Job.created_at, Job.retried_at)
        .where(Job.id.in_(sorted(job_ids)), Job.status.in_(sorted(STOPPED_ITEMS)))
        .order_by(Job.id)
    ).all()
    cancelled = [r.id for r in rows if STOPPED_ITEMS[r.status] == ItemStatus.CANCELLED]
    stops = [(ItemStatus.CANCELLED, Item.job_id.in_(cancelled), CANCEL_ERROR)] if cancelled else []
    return stops + [
        (
            ItemStatus.EXPIRED,
            Item.job_id == r.id,
            expired_error(r.expires_at, r.retried_at or r.created_at),
        )
        for r in rows
        if STOPPED_ITEMS[r.status] == ItemStatus.EXPIRED
    ]


def extend_leases(session: Session, owned: Mapping[int, int], lease_seconds: int) -> set[int]:
    """Push the lease of items still held by the given attempts ({item id: attempts})
    `lease_seconds` ahead, in one statement; returns the ids still owned. An id missing from
    it was finished or taken back by the sweeper: its worker must not run it any more."""
    if not owned:
        return set()
    v = (
        values(column("id", BigInteger), column("attempts", Integer), name="owned")
        .data(sorted(owned.items()))
        .cte("owned")
    )
    return set(
        session.scalars(
            update(Item)
            .where(
                Item.id == v.c.id,
                Item.attempts == v.c.attempts,
                Item.status == ItemStatus.RUNNING,
            )
            .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
            .returning(Item.id)
            .execution_options(synchronize_session=False)
        )
    )


def cancel_pending(session: Session, job_id: str, item_ids: Sequence[int] | None = None) -> int:
    """pending -> cancelled for the job's items (all of them, or those among `item_ids`),
    counted in the job's `cancelled`. Returns how many moved."""
    return _end_pending(session, job_id, ItemStatus.CANCELLED, CANCEL_ERROR, item_ids)


def stop_pending(session: Session, job_id: str, item_ids: Sequence[int] | None = None) -> int:
    """The pending items of a stopping job (all, or those among `item_ids`) end as its stop
    says (`STOPPED_ITEMS`): cancelled for a cancel, expired for a window that is over.
    Returns how many moved (0 for a job that is not stopping)."""
    for target, _, error in _stops(session, {job_id}):
        return _end_pending(session, job_id, target, error, item_ids)
    return 0


def _end_pending(
    session: Session,
    job_id: str,
    target: ItemStatus,
    error: str,
    item_ids: Sequence[int] | None = None,
) -> int:
    """pending -> `target` (cancelled | expired) with `error`, counted."""
    condition = [
        Item.job_id == job_id,
        Item.status.in_(_item_from({ItemStatus.PENDING}, target)),
    ]
    if item_ids is not None:
        if not item_ids:
            return 0
        condition.append(Item.id.in_(list(item_ids)))
    n = _rowcount(
        session.execute(
            update(Item)
            .where(*condition)
            .values(status=target, error=error, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    )
    bump_counts(session, {job_id: Counter({target: n})})
    return n


def retry_failed(
    session: Session, job_id: str, condition: ColumnElement[bool] | None = None
) -> int:
    """failed -> pending for the job's items that ran at least once, and expired -> pending
    for its expired items (run or not: their inputs were never at fault), those matching
    `condition`: undispatched, with their full MAX_ATTEMPTS again (`attempt_base` = attempts,
    `retries` 0; `attempts` itself only grows, so an old attempt's late outcome still matches
    nothing), one statement per source state; the job's `failed` and `expired` counters go
    down by the rows that moved. Returns how many moved. The job itself moves with
    `restart`."""
    sources = {
        # failed before it ever ran (a bad input): would fail again
        ItemStatus.FAILED: Item.attempts > 0,
        ItemStatus.EXPIRED: None,
    }
    moved: Counter[str] = Counter()
    for source, own in sources.items():
        where = [
            Item.job_id == job_id,
            Item.status.in_(_item_from({source}, ItemStatus.PENDING)),
            *(c for c in (own, condition) if c is not None),
        ]
        moved[source] = _rowcount(
            session.execute(
                update(Item)
                .where(*where)
                .values(
                    status=ItemStatus.PENDING,
                    attempt_base=Item.attempts,
                    retries=0,
                    error=None,
                    result=None,
                    lease_until=None,
                    enqueued_at=None,
                    not_before=None,
                    started_at=None,
                    finished_at=None,
                )
                .execution_options(synchronize_session=False)
            )
        )
    n = moved.total()
    if n:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                failed=Job.failed - moved[ItemStatus.FAILED],
                expired=Job.expired - moved[ItemStatus.EXPIRED],
                updated_at=utcnow(),
            )
            .execution_options(synchronize_session=False)
        )
    return n


def requeue_expired(session: Session, now: datetime, limit: int) -> list[Expired]:
    """running past its lease -> cancelled or expired (the job is being stopped: as the stop
    says), failed (the item used its MAX_ATTEMPTS: a poison pill) or pending (handed out
    again). One statement per verdict; counters bumped; returns every item that moved, with
    its new status."""
    expired = and_(Item.status == ItemStatus.RUNNING, Item.lease_until < now)
    found = session.execute(
        select(Item.id, Item.job_id).where(expired).order_by(Item.id).limit(limit)
    ).all()
    if not found:
        return []
    ids = [item_id for item_id, _ in found]
    verdicts: list[tuple[ItemStatus, ColumnElement[bool], dict[str, Any]]] = [
        (target, of_job, {"error": error, "finished_at": now})
        for target, of_job, error in _stops(session, {job_id for _, job_id in found})
    ]
    verdicts += [
        (
            ItemStatus.FAILED,
            ~_poison_left(),
            {"error": POISON_ERROR, "finished_at": now},
        ),
        # back to pending, already dispatched: the sweeper sends it in a chunk of its own
        (ItemStatus.PENDING, _poison_left(), {"enqueued_at": now}),
    ]
    moved: list[Expired] = []
    for target, condition, extra in verdicts:
        rows = session.execute(
            update(Item)
            .where(
                Item.id.in_(ids),
                expired,
                Item.status.in_(_item_from({ItemStatus.RUNNING}, target)),
                condition,
            )
            .values(status=target, lease_until=None, **extra)
            .returning(
                Item.id, Item.job_id, Item.idx, Item.attempts - Item.retries - Item.attempt_base
            )
            .execution_options(synchronize_session=False)
        ).all()
        moved += [Expired(r[0], r[1], r[2], r[3], target) for r in rows]
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for item in moved:
        if item.status != ItemStatus.PENDING:
            counts[item.job_id][item.status] += 1
    bump_counts(session, counts)
    return moved


def take_lost_pending(
    session: Session,
    kind: str,
    cutoff: datetime,
    now: datetime,
    limit: int,
    in_flight: Collection[int] = (),
    *,
    model: str | None = None,
) -> list[tuple[int, str]]:
    """Pending items of live jobs of `kind` (and `model`, if given) dispatched before
    `cutoff` and not `in_flight` (named by no queued or freshly reserved message: their
    message was lost): stamped enqueued `now`, so a concurrent sweep does not send them
    again. Returns (item id, job id) of those this call took."""
    live = select(Job.id).where(
        Job.kind == kind, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING))
    )
    if model is not None:
        live = live.where(Job.model == model)
    stale = and_(
        Item.status == ItemStatus.PENDING, Item.enqueued_at < cutoff, Item.job_id.in_(live)
    )
    candidates = session.scalars(select(Item.id).where(stale).order_by(Item.id).limit(limit))
    ids = [item_id for item_id in candidates if item_id not in in_flight]
    if not ids:
        return []
    rows = session.execute(
        update(Item)
        .where(Item.id.in_(ids), stale)
        .values(enqueued_at=now)
        .returning(Item.id, Item.job_id)
        .execution_options(synchronize_session=False)
    ).all()
    return sorted((r.id, r.job_id) for r in rows)
