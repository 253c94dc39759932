"""One chunk message, start to end: claim, prepare, hand to the engine, wait until recorded.

The kind-specific parts come from a `Handler` (`worker.caption`, `worker.generate`): what to
fetch and how to build requests (`prepare`, on this chunk's thread), and what an item's
outputs become (`finish`, in the outtake pool: a caption, or images encoded and uploaded).
This module owns the order of state changes, the same for both kinds:

1. claim the chunk's items (`lifecycle.claim`: already final or leased items are skipped;
   the job moves to running); a chunk of a job on another model than this worker's is handed
   back (its queue was wrong); a chunk of a job being stopped ends its pending items as the
   stop says (cancelled, or expired: a live job past its deadline is expired here first);
2. `prepare` the claimed items, then the engine's `prepare` turns each request into units
   (CPU work, here, not on the engine thread); failures become outcomes at once;
3. each request goes to the pipeline as a ticket: the engine thread packs it into passes with
   the ready requests of every other chunk and job; its outputs are finished in the outtake
   pool and recorded by the recorder (one transaction for everything that arrived together);
   a ticket of a job being cancelled, or past its deadline, is dropped before its pass and
   its item cancelled or expired (`JobWatch`);
4. the task waits until every claimed item is recorded (or its lease was taken back: a
   lease heartbeat keeps the others), so Celery acknowledges the message only then. A chunk
   whose items share one output object (a `Sink`: a generate job's WebDataset shard) holds
   its succeeded outcomes (their leases still beaten) until every item is done, has the
   sink store the object, and records them only then; then
   the move to `finalizing` is tried (the winner enqueues `janus.finalize_job`) and the job's
   next chunk is dispatched (fair share: `items.dispatch`).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

from janus_batch import lifecycle
from janus_batch.constants import DISPATCH_JOB_TASK, FINALIZE_JOB_TASK
from janus_batch.db import session_scope
from janus_batch.items import dispatch_next
from janus_batch.lifecycle import Claimed, Outcome
from janus_batch.models import Job, utcnow
from janus_batch.queue import send_control
from janus_batch.states import JOB_LIVE, JOB_STOPPING, STOPPED_ITEMS, ItemStatus, JobStatus
from worker import metrics
from worker.context import Context
from worker.heartbeat import LeaseHeartbeat
from worker.pipeline import Pipeline, Tracker
from worker.scheduler import Ticket

log = logging.getLogger(__name__)

NOT_RUNNABLE = frozenset(
    {JobStatus.FINALIZING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DELETING}
)
WAIT_STEP = 1.0
"""Seconds between two looks at lost leases while a chunk waits for its items."""


class Sink(Protocol):
    """One output object that all the items of a chunk are written into (a shard)."""

    def commit(self, held: list[Outcome]) -> list[Outcome]:
        """Store the object; the outcomes to record instead of the `held` succeeded ones."""
        ...

    def discard(self) -> None:
        """Free what the object holds locally."""
        ...


@dataclass(frozen=True)
class Work:
    """A claimed item made ready for the engine: `request` is a CaptionRequest or a
    GenerateRequest, or a tuple of them (an image asked several prompts): their units form
    one ticket, its outputs in the tuple's order. `sink`: the chunk's shared output object,
    if its items' outputs go into one (the same for every item of the chunk)."""

    item: Claimed
    request: Any
    sink: Sink | None = None


class Handler(Protocol):
    """The kind-specific steps of a chunk."""

    kind: str

    def prepare(
        self, ctx: Context, job: Job, items: list[Claimed]
    ) -> tuple[list[Work], list[Outcome]]:
        """Ready the items' requests (fetch, decode); items that cannot be readied fail here."""
        ...

    def finish(self, ctx: Context, job: Job, work: Work, ticket: Ticket) -> Outcome:
        """The outcome of an item whose units all ran (`ticket.outputs`): in the outtake pool."""
        ...


def failed(item: Claimed, error: str) -> Outcome:
    """A failed outcome."""
    return Outcome(item, ItemStatus.FAILED, error=error)


def stopped(ctx: Context, job: Job, item: Claimed) -> Outcome:
    """The outcome of an item dropped because its job is being stopped: expired (its error
    names the window) when the job's deadline passed, else cancelled."""
    stop = ctx.pipeline().watch.stopped_as(job.id)
    if stop is None:  # its lease was taken back meanwhile: whatever it says is not counted
        return Outcome(item, ItemStatus.CANCELLED, error=lifecycle.CANCEL_ERROR)
    return Outcome(item, stop.status, error=stop.error)


STORAGE_RETRY_DELAY = 0.0
"""Seconds a deferred item waits when storage was down: none, the breaker already holds new
work back while it is (the item is dispatched again at once, and claimed when storage
answers)."""


def deferred(ctx: Context, kind: str, item: Claimed, error: str, *, storage: bool) -> Outcome:
    """A transient error: the item goes back to wait and is tried again later, without
    spending one of its attempts. Storage outages defer without limit; an input host's own
    transient errors up to `max_input_deferrals` times (waits doubling from 1 s up to
    `retry_delay_max`), then the item fails."""
    settings = ctx.settings
    if storage:
        delay = STORAGE_RETRY_DELAY
    elif item.retries >= settings.max_input_deferrals:
        return failed(item, f"{error} (still failing after {item.retries + 1} tries)")
    else:
        delay = min(settings.retry_delay_max, 2.0**item.retries) * random.uniform(0.75, 1.0)
    metrics.ITEMS_DEFERRED.labels(kind, "storage" if storage else "input").inc()
    log.info("job=%s idx=%d deferred %.1fs: %s", item.job_id, item.idx, delay, error)
    return Outcome(item, ItemStatus.PENDING, error=f"{lifecycle.WAITING}: {error}", delay=delay)


def run_chunk(ctx: Context, handler: Handler, job_id: str, item_ids: Sequence[int]) -> Counter[str]:
    """Process one chunk message; returns the counts this call changed (by item status)."""
    started = time.monotonic()
    pipeline = ctx.pipeline()
    pipeline.engine()  # a worker whose model did not load raises here, before claiming
    if not _storage_usable(ctx, job_id, item_ids):
        return Counter()
    job, claimed = _start(ctx, handler.kind, job_id, item_ids)
    total: Counter[str] = Counter()
    later: list[float] = []
    if job is not None and claimed:
        log.info("job=%s chunk claimed %d/%d items", job_id, len(claimed), len(item_ids))
        try:
            total = _run_claimed(ctx, handler, job, claimed, later)
        finally:
            metrics.CHUNK_SECONDS.labels(handler.kind).observe(time.monotonic() - started)
        log.info("job=%s chunk done: %s", job_id, dict(total) or "nothing recorded")
    if job is not None:
        _after(ctx, job, max(later, default=0.0))
    return total


def _storage_usable(ctx: Context, job_id: str, item_ids: Sequence[int]) -> bool:
    """Storage down: claim nothing until it answers. After half of stale_pending_seconds the
    chunk gives its items back undispatched and returns (its message is acknowledged), so a
    long outage neither looks like a lost message nor holds a message past the broker's
    visibility timeout; the job's next dispatch sends them again."""
    limit = ctx.settings.stale_pending_seconds / 2
    if ctx.pipeline().breaker.wait_until_usable(time.monotonic() + limit):
        return True
    with session_scope(ctx.database_url) as session:
        n = lifecycle.release_dispatch(session, list(item_ids))
    log.warning("job=%s storage still down after %.0f s: %d items handed back", job_id, limit, n)
    return False


def _start(
    ctx: Context, kind: str, job_id: str, item_ids: Sequence[int]
) -> tuple[Job | None, list[Claimed]]:
    """Claim the chunk's items, or end them as the job's stop says (cancelled, expired); a
    live job past its deadline is expired first (`lifecycle.expire_job`)."""
    ended = 0
    claimed: list[Claimed] = []
    with session_scope(ctx.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job=%s chunk skipped: the job does not exist", job_id)
            return None, []
        if job.status in NOT_RUNNABLE:
            log.info("job=%s chunk skipped: job is %s", job_id, job.status)
            return job, []
        if not _serves(ctx, session, job, item_ids):
            return None, []
        if job.status in JOB_LIVE and _expire_if_overdue(session, job):
            session.refresh(job)
        if job.status in JOB_STOPPING:
            ended = lifecycle.stop_pending(session, job_id, item_ids)
            log.info("job=%s chunk of a %s job: %d pending items ended", job_id, job.status, ended)
        else:
            claimed = lifecycle.claim(session, job_id, item_ids, ctx.settings.lease_seconds)
    if ended:
        metrics.ITEMS_PROCESSED.labels(kind, STOPPED_ITEMS[JobStatus(job.status)]).inc(ended)
    if not claimed and job.status not in JOB_STOPPING:
        log.info("job=%s chunk skipped: its items are done or running elsewhere", job_id)
    return job, claimed


_told_models: set[str] = set()
"""Jobs of another model this (one-model) worker ran, told once per job in the log."""


def _serves(ctx: Context, session: Session, job: Job, item_ids: Sequence[int]) -> bool:
    """Whether this worker runs a chunk of `job`: one of its model, always. One of another
    model reached it through a queue it consumes, so the processes' settings differ:
    - a worker of a several-model fleet (JANUS_BATCH_DEFAULT_MODEL or MODEL_NAME set) never
      runs another model's job: it hands the items back undispatched and marks the job
      waiting with the reason (status, dashboard, /v1/jobs), so a fleet whose settings
      disagree shows why its jobs do not move instead of looping silently;
    - a one-model worker (neither set: the deployments from before several models) runs it,
      as it always did, and logs once per job which model ran it."""
    settings = ctx.settings
    served = settings.resolved_model_name()
    if job.model == served:
        return True
    if not (settings.default_model or settings.model_name):
        if job.id not in _told_models:
            _told_models.add(job.id)
            log.warning(
                "job=%s names model %s; this one-model worker serves %s and runs it (set "
                "JANUS_BATCH_DEFAULT_MODEL alike in the API and every worker to name models)",
                job.id,
                job.model,
                served,
            )
        return True
    n = lifecycle.release_dispatch(session, list(item_ids))
    reason = (
        f"a worker serving {served} received its chunk and handed it back: set "
        "JANUS_BATCH_DEFAULT_MODEL alike in the API and every worker"
    )
    lifecycle.bump_counts(session, {}, {job.id: reason})
    log.error("job=%s chunk of model %s handed back undispatched (%d items): %s", job.id,
              job.model, n, reason)  # fmt: skip
    return False


def _expire_if_overdue(session: Session, job: Job) -> bool:
    """A job past its deadline moves to expiring here (its pending items expired), without
    waiting for the sweeper; True if it moved. The deadline is read again with the job's
    status (`lifecycle.expire_job`): a retry may have set a new one."""
    if job.expires_at is None:
        return False
    moved, n = lifecycle.expire_job(session, job.id, utcnow())
    if moved:
        log.info("job=%s past its deadline: expiring, %d pending items expired", job.id, n)
        metrics.ITEMS_PROCESSED.labels(job.kind, ItemStatus.EXPIRED).inc(n)
    return moved


def _run_claimed(
    ctx: Context, handler: Handler, job: Job, claimed: list[Claimed], later: list[float]
) -> Counter[str]:
    """Prepare the claimed items, send them through the pipeline, wait until all are
    recorded or given up; returns the counts recorded (and adds to `later` the waits of the
    items it deferred)."""
    pipeline = ctx.pipeline()
    tracker = Tracker({item.id for item in claimed})
    held: list[Outcome] = []
    sinks: list[Sink] = []
    pipeline.watch.enter(job.id)
    try:
        with LeaseHeartbeat(ctx, job.id, {c.id: c.attempts for c in claimed}) as heartbeat:

            def record(outcomes: list[Outcome], into: Tracker = tracker) -> None:
                if sinks and into is tracker:  # succeeded: recorded once the sink is stored
                    keep = [o for o in outcomes if o.status == ItemStatus.SUCCEEDED]
                    outcomes = [o for o in outcomes if o.status != ItemStatus.SUCCEEDED]
                    held.extend(keep)
                    tracker.settle((o.item.id for o in keep), {})
                later.extend(o.delay for o in outcomes if o.status == ItemStatus.PENDING)
                heartbeat.release(o.item.id for o in outcomes)  # finished: no more beats
                pipeline.recorder.add(handler.kind, outcomes, into)

            pipeline.wait_for_room()
            try:
                work, early = handler.prepare(ctx, job, claimed)
            except Exception as exc:  # a bug in preparation must not strand the claimed items
                log.exception("job=%s preparing the chunk failed", job.id)
                work, early = [], [failed(c, f"worker error: {_describe(exc)}") for c in claimed]
            sinks.extend({id(w.sink): w.sink for w in work if w.sink is not None}.values())
            record(early)
            for w in work:
                _submit(ctx, pipeline, handler, job, w, heartbeat, record, tracker)
            _wait(pipeline, job, heartbeat, tracker)
            for sink in sinks:
                _commit(pipeline, job, sink, held, heartbeat, record, tracker)
    finally:
        pipeline.watch.leave(job.id)
        for sink in sinks:
            sink.discard()
    return tracker.moved


def _wait(pipeline: Pipeline, job: Job, heartbeat: LeaseHeartbeat, tracker: Tracker) -> None:
    """Until every item of `tracker` is settled (items whose lease was taken back are given
    up); RuntimeError if the engine thread stops meanwhile."""
    while not tracker.wait(WAIT_STEP):
        if not pipeline.engine_loop.alive():  # leases lapse; the sweeper hands them out
            raise RuntimeError("the engine thread stopped: chunk abandoned")
        lost = heartbeat.taken_back() & set(tracker.left)
        if lost:
            log.warning("job=%s lease of %d items taken back: not recorded here", job.id, len(lost))
            tracker.settle(lost, {})


def _commit(
    pipeline: Pipeline,
    job: Job,
    sink: Sink,
    held: list[Outcome],
    heartbeat: LeaseHeartbeat,
    record: Any,
    tracker: Tracker,
) -> None:
    """Store the chunk's shared output object, then record the outcomes held for it (and
    wait until they are); their counts join `tracker`'s."""
    outcomes = sink.commit(held)
    if not outcomes:
        return
    stored = Tracker({o.item.id for o in outcomes})
    record(outcomes, stored)
    _wait(pipeline, job, heartbeat, stored)
    tracker.moved.update(stored.moved)


def _submit(
    ctx: Context,
    pipeline: Pipeline,
    handler: Handler,
    job: Job,
    work: Work,
    heartbeat: LeaseHeartbeat,
    record: Any,
    tracker: Tracker,
) -> None:
    """Turn one item's request into units and send them to the engine as a ticket."""
    engine = pipeline.engine()
    requests = work.request if isinstance(work.request, tuple) else (work.request,)
    try:
        units = [unit for request in requests for unit in engine.prepare(request)]
    except Exception as exc:  # JanusRequestError / JanusImageError: this item alone
        record([failed(work.item, _describe(exc))])
        return
    item_id = work.item.id

    def keep() -> bool:
        return heartbeat.owns(item_id) and not pipeline.watch.stopping(job.id)

    def done(ticket: Ticket) -> None:  # on the engine thread: hand off at once
        pipeline.outtake.submit(
            _finish, ctx, handler, job, work, ticket, heartbeat, record, tracker
        )

    pipeline.submit(
        Ticket(
            kind=handler.kind,
            units=units,
            rows=engine.unit_rows,
            on_done=done,
            job_id=job.id,
            priority=job.priority or 0,
            keep=keep,
        )
    )


def _finish(
    ctx: Context,
    handler: Handler,
    job: Job,
    work: Work,
    ticket: Ticket,
    heartbeat: LeaseHeartbeat,
    record: Any,
    tracker: Tracker,
) -> None:
    """In the outtake pool: the item's outcome from its ticket, recorded."""
    item = work.item
    try:
        if ticket.dropped:
            if item.id in heartbeat.taken_back():
                tracker.settle([item.id], {})  # taken back by the sweeper: not ours to record
                return
            outcome = stopped(ctx, job, item)
        elif ticket.error is not None:
            outcome = failed(item, ticket.error)
        else:
            outcome = handler.finish(ctx, job, work, ticket)
    except Exception as exc:  # one item fails, never the chunk
        log.exception("job=%s idx=%d finishing failed", job.id, item.idx)
        outcome = failed(item, f"worker error: {_describe(exc)}")
    if outcome.status == ItemStatus.FAILED:
        log.info("job=%s idx=%d failed: %s", job.id, item.idx, outcome.error)
    record([outcome])


def _after(ctx: Context, job: Job, later: float = 0.0) -> None:
    """The chunk is over: try the move to finalizing, and release the job's next chunk; if
    it deferred items for `later` seconds, a dispatch of the job then (so they go again even
    when no other chunk of the job ends meanwhile, without waiting for a sweep)."""
    with session_scope(ctx.database_url) as session:
        _expire_if_overdue(session, job)
        won = lifecycle.start_finalizing(session, job.id)
    if won:
        log.info("job=%s all items final: finalize enqueued", job.id)
        send_control(ctx.app, FINALIZE_JOB_TASK, job.id)
        return
    dispatch_next(ctx.settings, ctx.app, job.id, job.kind, job.model)
    if later > 0:
        send_control(ctx.app, DISPATCH_JOB_TASK, job.id, countdown=later + 0.1)


def dispatch_job(ctx: Context, job_id: str) -> int:
    """Send a live job's next chunks (the `janus.dispatch_job` control task): items deferred
    by a transient error go again once their wait is over. Returns how many were sent."""
    with session_scope(ctx.database_url) as session:
        job = session.get(Job, job_id)
    if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        return 0
    return dispatch_next(ctx.settings, ctx.app, job.id, job.kind, job.model)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
