"""One chunk message, start to end: claim, prepare, run in micro-batches, record, hand off.

The kind-specific parts (what to fetch, how to batch, how to run the engine and store the
outputs) come from a `Handler` (`worker.caption`, `worker.generate`); this module owns the
order of state changes, which is the same for both kinds:

1. claim the chunk's items (conditional UPDATE; already final or leased items are skipped)
   and mark the job running, in one transaction;
2. `prepare` the claimed items (fetch inputs, build requests); failures become outcomes;
3. for each micro-batch: stop if the job is being cancelled, else `run` it (out of memory:
   run each half on its own, down to single items, before failing them); then, in one
   transaction, record the outcomes (counters bumped by rows actually changed), extend the
   lease of the items still to do, and re-read the job status;
4. items left when a cancel is seen become `cancelled`; the last transaction tries the move
   to `finalizing` and the winner enqueues `janus.finalize_job`.

Metrics (`worker.metrics`): items are counted once the transaction that moved them has
committed, by the rows it changed; `run_engine` times each engine call and hooks the engine
so its forward passes record their fill.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

from janus_batch import lifecycle
from janus_batch.constants import FINALIZE_JOB_TASK
from janus_batch.db import session_scope
from janus_batch.lifecycle import Claimed, Outcome
from janus_batch.models import Job
from janus_batch.queue import send_control
from janus_batch.states import ItemStatus, JobKind, JobStatus
from worker import metrics
from worker.context import Context
from worker.heartbeat import LeaseHeartbeat

log = logging.getLogger(__name__)

STOPPING = frozenset({JobStatus.CANCELLING, JobStatus.CANCELLED})
NOT_RUNNABLE = frozenset({JobStatus.FINALIZING, JobStatus.SUCCEEDED, JobStatus.FAILED})


@dataclass(frozen=True)
class Work:
    """A claimed item made ready for the engine: `payload` is the handler's (bytes, request)."""

    item: Claimed
    payload: Any


class Handler(Protocol):
    """The kind-specific steps of a chunk."""

    kind: str

    def prepare(
        self, ctx: Context, job: Job, items: list[Claimed]
    ) -> tuple[list[Work], list[Outcome]]:
        """Ready the items for the engine; items that cannot be readied fail here."""

    def batches(self, ctx: Context, work: list[Work]) -> Iterator[list[Work]]:
        """Split the work into micro-batches (one engine call each)."""

    def run(self, ctx: Context, job: Job, batch: list[Work]) -> list[Outcome]:
        """Run one micro-batch and store its outputs; one outcome per item."""


def failed(item: Claimed, error: str) -> Outcome:
    """A failed outcome."""
    return Outcome(item, ItemStatus.FAILED, error=error)


def run_chunk(ctx: Context, handler: Handler, job_id: str, item_ids: Sequence[int]) -> Counter[str]:
    """Process one chunk message; returns the counts this call changed (by item status)."""
    started = time.monotonic()
    job, claimed = _start(ctx, handler.kind, job_id, item_ids)
    if job is None or not claimed:
        return Counter()
    log.info("job=%s chunk claimed %d/%d items", job_id, len(claimed), len(item_ids))
    try:
        total = _run_claimed(ctx, handler, job, claimed)
    finally:
        metrics.CHUNK_SECONDS.labels(handler.kind).observe(time.monotonic() - started)
    log.info("job=%s chunk done: %s", job_id, dict(total) or "nothing recorded")
    return total


def _run_claimed(ctx: Context, handler: Handler, job: Job, claimed: list[Claimed]) -> Counter[str]:
    """Prepare, run and record the claimed items of a chunk; the counts recorded. A lease
    heartbeat keeps the items leased meanwhile; items found taken back are not run here."""
    kind = handler.kind
    total: Counter[str] = Counter()
    with LeaseHeartbeat(ctx, job.id, {item.id: item.attempts for item in claimed}) as heartbeat:
        try:
            work, early = handler.prepare(ctx, job, claimed)
        except Exception as exc:  # a bug in preparation must not strand the claimed items
            log.exception("job=%s preparing the chunk failed", job.id)
            work, early = [], [failed(item, f"worker error: {_describe(exc)}") for item in claimed]
        remaining = _owned(heartbeat, work)
        status = _checkpoint(ctx, kind, job.id, early, remaining, total, heartbeat)
        remaining = _owned(heartbeat, remaining)
        for batch in handler.batches(ctx, work):
            if status in STOPPING:
                break
            batch = _owned(heartbeat, batch)
            if not batch:
                continue
            outcomes = _run_batch(ctx, handler, job, batch)
            done = {w.item.id for w in batch}
            remaining = [w for w in remaining if w.item.id not in done]
            status = _checkpoint(ctx, kind, job.id, outcomes, remaining, total, heartbeat)
            remaining = _owned(heartbeat, remaining)
        if remaining:
            log.info("job=%s cancelled: %d claimed items not run", job.id, len(remaining))
            cancelled = [
                Outcome(w.item, ItemStatus.CANCELLED, error="job cancelled") for w in remaining
            ]
            _checkpoint(ctx, kind, job.id, cancelled, [], total, heartbeat)
    return total


def _owned(heartbeat: LeaseHeartbeat, work: list[Work]) -> list[Work]:
    """The work whose items this worker still owns (the sweeper took the others back)."""
    return [w for w in work if heartbeat.owns(w.item.id)]


def run_engine(kind: str, engine: Any, requests: list[Any]) -> list[Any]:
    """One engine call (a micro-batch: `engine.caption` or `engine.generate`), its size and
    model seconds recorded; the first call hooks the engine so each forward pass records
    its fill. Engines without the hook (test doubles) are called all the same."""
    hook = getattr(engine, "on_pass", None)
    if hasattr(engine, "max_batch_rows") and not isinstance(hook, metrics.PassRecorder):
        engine.on_pass = metrics.PassRecorder(engine.max_batch_rows, then=hook)
    call = engine.caption if kind == JobKind.CAPTION else engine.generate
    started = time.perf_counter()
    results = call(requests)
    metrics.observe_batch(kind, size=len(requests), model_seconds=time.perf_counter() - started)
    return list(results)


def _start(
    ctx: Context, kind: str, job_id: str, item_ids: Sequence[int]
) -> tuple[Job | None, list[Claimed]]:
    """Claim the chunk's items, or cancel them if the job is being cancelled."""
    finalize = False
    cancelled = 0
    claimed: list[Claimed] = []
    with session_scope(ctx.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job=%s chunk skipped: the job does not exist", job_id)
            return None, []
        if job.status in NOT_RUNNABLE:
            log.info("job=%s chunk skipped: job is %s", job_id, job.status)
            return job, []
        if job.status in STOPPING:
            cancelled = lifecycle.cancel_pending(session, job_id, item_ids)
            log.info(
                "job=%s chunk of a cancelled job: %d pending items cancelled", job_id, cancelled
            )
        else:
            claimed = lifecycle.claim(session, job_id, item_ids, ctx.settings.lease_seconds)
        if not claimed:
            finalize = lifecycle.start_finalizing(session, job_id)
    if cancelled:
        metrics.ITEMS_PROCESSED.labels(kind, ItemStatus.CANCELLED).inc(cancelled)
    if finalize:
        _send_finalize(ctx, job_id)
    if not claimed and job.status not in STOPPING:
        log.info("job=%s chunk skipped: its items are done or running elsewhere", job_id)
    return job, claimed


def _run_batch(
    ctx: Context, handler: Handler, job: Job, batch: list[Work], *, retry_oom: bool = True
) -> list[Outcome]:
    """Run one micro-batch; any error fails its items, the worker goes on.

    The engine allocates every forward pass for JANUS_BATCH_BATCH_ROWS rows whatever the
    micro-batch holds (that keeps outputs independent of their neighbours), so a smaller
    batch would not fit where this one did not. Out of memory is retried once after freeing
    cached memory (fragmentation, a neighbour process); a second time fails the items with
    a message that says which setting to lower.
    """
    retry = False
    try:
        outcomes = handler.run(ctx, job, batch)
    except Exception as exc:
        oom = _out_of_memory(exc)
        if oom and retry_oom:
            log.warning(
                "job=%s micro-batch of %d items: %s; freeing cached memory, retrying once",
                job.id,
                len(batch),
                _describe(exc),
            )
            retry = True  # retried below, once this exception (and its frames) is released
        else:
            log.exception("job=%s micro-batch of %d items failed", job.id, len(batch))
            hint = (
                f" (each forward pass holds {ctx.settings.batch_rows} rows: lower "
                "JANUS_BATCH_BATCH_ROWS or use a larger GPU)"
                if oom
                else ""
            )
            return [failed(w.item, f"model error: {_describe(exc)}{hint}") for w in batch]
    if retry:
        _free_cached_memory()
        return _run_batch(ctx, handler, job, batch, retry_oom=False)
    for outcome in outcomes:
        if outcome.status == ItemStatus.FAILED:
            log.info("job=%s idx=%d failed: %s", job.id, outcome.item.idx, outcome.error)
    return outcomes


def _free_cached_memory() -> None:
    """Return the allocator's cached blocks (CUDA) so a retry starts from a clean pool."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _checkpoint(
    ctx: Context,
    kind: str,
    job_id: str,
    outcomes: list[Outcome],
    remaining: list[Work],
    total: Counter[str],
    heartbeat: LeaseHeartbeat | None = None,
) -> str | None:
    """Record outcomes, extend the lease of the rest, re-read the job status (one transaction);
    when nothing remains, try the move to finalizing. Returns the job status. Items of
    `remaining` whose lease was taken back are released from the heartbeat (not run)."""
    finalize = False
    lost: set[int] = set()
    hold = heartbeat.hold() if heartbeat is not None else nullcontext()
    if heartbeat is not None:
        heartbeat.release(o.item.id for o in outcomes)  # finished: no more beats
    with hold, session_scope(ctx.database_url) as session:
        changed = lifecycle.complete(session, outcomes).get(job_id, Counter())
        if remaining:
            owned = {w.item.id: w.item.attempts for w in remaining}
            still = lifecycle.extend_leases(session, owned, ctx.settings.lease_seconds)
            lost = set(owned) - still
        else:
            finalize = lifecycle.start_finalizing(session, job_id)
        job = session.get(Job, job_id)
        status = job.status if job is not None else None
    total.update(changed)  # committed: count them
    for item_status, n in changed.items():
        metrics.ITEMS_PROCESSED.labels(kind, item_status).inc(n)
    if lost:
        log.warning(
            "job=%s lease of %d items taken back (ids %s): they are not run here",
            job_id,
            len(lost),
            sorted(lost),
        )
        if heartbeat is not None:
            heartbeat.release(lost)
    if finalize:
        _send_finalize(ctx, job_id)
    return status


def _send_finalize(ctx: Context, job_id: str) -> None:
    log.info("job=%s all items final: finalize enqueued", job_id)
    send_control(ctx.app, FINALIZE_JOB_TASK, job_id)


def _out_of_memory(exc: BaseException) -> bool:
    """Whether the engine failed for want of memory."""
    from janus import JanusRuntimeError  # loaded with the engine that raised

    return isinstance(exc, JanusRuntimeError) and exc.transient


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
