"""The worker's pipeline: one thread owns the engine; bounded stages feed and drain it.

    chunk threads (Celery's threads pool, one per chunk in flight)
        claim -> fetch, decode, prepare (CPU) -> tickets
                                                   |
    engine thread          PassScheduler -> run_pass -> (decode images) -> on_done
                                                                             |
    outtake pool (encode + upload: JANUS_BATCH_UPLOAD_CONCURRENCY threads) -> outcome
                                                                             |
    recorder thread        outcomes of every chunk and job -> one transaction per flush

The engine thread only runs forward passes (and VQ decodes): it never fetches, encodes,
uploads or writes SQL, and it is the only thread that touches the device (the model is
loaded on it). A pass takes ready units from any chunk or job (`worker.scheduler`). Memory
is bounded by the chunks in flight (the pool's concurrency) times the chunk size: a chunk
thread holds its prepared requests and waits until every item is recorded before it takes
the next message.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from janus_batch import lifecycle
from janus_batch.db import session_scope
from janus_batch.expiry import expired_error
from janus_batch.lifecycle import Outcome
from janus_batch.models import Job, utcnow
from janus_batch.states import JOB_LIVE, JOB_STOPPING, STOPPED_ITEMS, ItemStatus, JobStatus
from worker import metrics
from worker.breaker import StorageBreaker
from worker.scheduler import Pass, PassScheduler, Ticket

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.02
"""How long the recorder gathers outcomes before writing them (one transaction)."""
RETRY_SECONDS = (0.5, 1, 2, 5)
PENDING_PASSES = 4
"""Passes' worth of prepared rows the engine may have waiting before chunks stop preparing."""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Stop:
    """How the unfinished items of a job being stopped end."""

    status: ItemStatus
    error: str

    @classmethod
    def of(cls, job: Any) -> Stop:
        """From a job row (status, expires_at, created_at, retried_at): cancelled for a
        cancel, else expired (the job is expiring, or live past its deadline)."""
        status = STOPPED_ITEMS.get(JobStatus(job.status), ItemStatus.EXPIRED)
        if status == ItemStatus.CANCELLED:
            return cls(status, lifecycle.CANCEL_ERROR)
        return cls(status, expired_error(job.expires_at, job.retried_at or job.created_at))


class JobWatch:
    """Which jobs with work in flight are being stopped, and what their items become:
    cancelled (a cancel) or expired (the job is `expiring`, or still live past its
    deadline). Re-read from SQL at most once per pass (the engine loop marks it stale after
    each), so a cancel or a deadline stops the next pass, and at least every REFRESH_SECONDS
    while no pass runs (outputs waiting for storage)."""

    REFRESH_SECONDS = 1.0

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._lock = threading.Lock()
        self._active: Counter[str] = Counter()
        self._stopping: dict[str, Stop] = {}
        self._stale = True
        self._read_at = 0.0

    def enter(self, job_id: str) -> None:
        with self._lock:
            self._active[job_id] += 1
            self._stale = True

    def leave(self, job_id: str) -> None:
        with self._lock:
            self._active[job_id] -= 1
            if self._active[job_id] <= 0:
                del self._active[job_id]
                self._stopping.pop(job_id, None)

    def mark_stale(self) -> None:
        self._stale = True

    def stopping(self, job_id: str) -> bool:
        return self.stopped_as(job_id) is not None

    def stopped_as(self, job_id: str) -> Stop | None:
        """What the job's unfinished items become (cancelled | expired, with the error to
        record), None if it goes on."""
        with self._lock:
            old = time.monotonic() - self._read_at > self.REFRESH_SECONDS
            if (self._stale or old) and self._active:
                self._refresh()
            return self._stopping.get(job_id)

    def _refresh(self) -> None:
        overdue = and_(Job.status.in_(sorted(JOB_LIVE)), Job.expires_at <= utcnow())
        try:
            with session_scope(self.database_url) as session:
                rows = session.execute(
                    select(
                        Job.id, Job.status, Job.expires_at, Job.created_at, Job.retried_at
                    ).where(
                        Job.id.in_(list(self._active)),
                        or_(Job.status.in_(sorted(JOB_STOPPING)), overdue),
                    )
                ).all()
        except SQLAlchemyError as exc:  # keep the last answer; the next pass asks again
            log.warning("job status not re-read: %s", exc)
            self._stale = False
            self._read_at = time.monotonic()
            return
        self._stopping = {row.id: Stop.of(row) for row in rows}
        self._stale = False
        self._read_at = time.monotonic()


@dataclass
class Tracker:
    """The items of one chunk on their way to SQL: the chunk thread waits on it."""

    left: set[int]
    moved: Counter[str] = field(default_factory=Counter)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def settle(self, ids: Iterable[int], moved: dict[int, str]) -> None:
        """These items are done with: recorded (`moved` holds those whose row changed) or
        given up (lease lost)."""
        with self._cond:
            for item_id in ids:
                if item_id in self.left:
                    self.left.discard(item_id)
                    if item_id in moved:
                        self.moved[moved[item_id]] += 1
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """True once every item is settled (False after `timeout`)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self.left, timeout)


@dataclass
class _Batch:
    kind: str
    outcomes: list[Outcome]
    tracker: Tracker


class Recorder:
    """Writes the outcomes of every chunk of the process together: whatever arrived within
    FLUSH_SECONDS goes in one transaction (`lifecycle.complete`: one UPDATE for all of them,
    counters bumped by the rows that moved). A database error keeps them and retries."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._queue: queue.Queue[_Batch | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="janus-recorder", daemon=True)
        self._thread.start()

    def add(self, kind: str, outcomes: list[Outcome], tracker: Tracker) -> None:
        if outcomes:
            self._queue.put(_Batch(kind, outcomes, tracker))

    def close(self) -> None:
        self._queue.put(None)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batches = [first]
            deadline = time.monotonic() + FLUSH_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                try:
                    more = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batches.append(more)
            self._write(batches)

    def _write(self, batches: list[_Batch]) -> None:
        outcomes = [o for b in batches for o in b.outcomes]
        try:
            moved = self._complete(outcomes)
        except Exception:  # never lose the thread: the chunks must hear back
            log.exception(
                "recording %d outcomes failed: the sweeper will hand them out", len(outcomes)
            )
            moved = {}
        for batch in batches:
            for outcome in batch.outcomes:
                status = moved.get(outcome.item.id)
                if status is not None and status != ItemStatus.PENDING:  # deferred: not done
                    metrics.ITEMS_PROCESSED.labels(batch.kind, status).inc()
            batch.tracker.settle((o.item.id for o in batch.outcomes), moved)

    def _complete(self, outcomes: list[Outcome]) -> dict[int, str]:
        """One transaction for all; a transient database error is retried with backoff, any
        other error (one outcome the database refuses) records them one by one, the refused
        one failed with the reason."""
        for attempt in range(len(RETRY_SECONDS) + 1):
            try:
                with session_scope(self.database_url) as session:
                    return lifecycle.complete(session, outcomes)
            except OperationalError as exc:
                wait = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                log.warning("recording %d outcomes: %s; retry in %ss", len(outcomes), exc, wait)
                time.sleep(wait)
            except SQLAlchemyError:
                if len(outcomes) == 1:
                    raise
                return self._one_by_one(outcomes)
        log.error("recording %d outcomes gave up: the sweeper will hand them out", len(outcomes))
        return {}

    def _one_by_one(self, outcomes: list[Outcome]) -> dict[int, str]:
        moved: dict[int, str] = {}
        for outcome in outcomes:
            try:
                with session_scope(self.database_url) as session:
                    moved.update(lifecycle.complete(session, [outcome]))
            except SQLAlchemyError as exc:
                log.warning(
                    "job=%s idx=%d outcome refused: %s", outcome.item.job_id, outcome.item.idx, exc
                )
                refused = Outcome(
                    outcome.item,
                    ItemStatus.FAILED,
                    error=f"worker error: result not recordable ({type(exc).__name__})",
                )
                with session_scope(self.database_url) as session:
                    moved.update(lifecycle.complete(session, [refused]))
        return moved


class EngineLoop:
    """The thread that owns the engine: loads it, then runs the scheduler's passes back to
    back. Out of memory: the pass is retried once after freeing cached memory, then its
    requests fail with a message naming the setting to lower; any other error fails the
    requests of that pass alone."""

    def __init__(
        self,
        load: Callable[[], Any],
        *,
        wait_seconds: float,
        watch: JobWatch,
        batch_rows_hint: int,
    ) -> None:
        self._load = load
        self._wait_seconds = wait_seconds
        self._watch = watch
        self._hint_rows = batch_rows_hint
        self._ready = threading.Event()
        self._engine: Any = None
        self._error: BaseException | None = None
        self.scheduler: PassScheduler | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="janus-engine", daemon=True)
        self._thread.start()

    def engine(self, timeout: float | None = None) -> Any:
        """The loaded engine (for `prepare` on other threads); re-raises a load error."""
        if not self._ready.wait(timeout):
            raise TimeoutError("the engine is still loading")
        if self._error is not None:
            raise RuntimeError(f"the engine could not be loaded: {_describe(self._error)}")
        return self._engine

    def submit(self, ticket: Ticket) -> None:
        self.engine()
        assert self.scheduler is not None
        self.scheduler.submit(ticket)

    def close(self) -> None:
        self._stop.set()
        if self.scheduler is not None:
            self.scheduler.close()

    def _run(self) -> None:
        try:
            self._engine = self._load()
            rows = int(getattr(self._engine, "max_batch_rows", self._hint_rows))
            self.scheduler = PassScheduler(rows, self._wait_seconds)
        except BaseException as exc:  # reported to every caller of engine()
            log.exception("the engine could not be loaded")
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        while not self._stop.is_set():
            step = self.scheduler.next_pass(timeout=1.0)
            if step is None:
                continue
            try:
                self._run_pass(step)
            except Exception as exc:  # never lose the engine thread: fail this pass alone
                log.exception("the %s pass could not be finished", step.kind)
                for ticket in {id(t): t for t, _ in step.entries}.values():
                    ticket.fail(f"worker error: {_describe(exc)}")

    def alive(self) -> bool:
        """Whether the engine thread still runs (False after a load error or a crash)."""
        return self._thread.is_alive() and self._error is None

    def _run_pass(self, step: Pass) -> None:
        started = time.perf_counter()
        try:
            outputs = self._outputs(step)
        except Exception as exc:
            log.exception("a %s pass of %d units failed", step.kind, len(step.entries))
            message = f"model error: {_describe(exc)}{self._oom_hint(exc)}"
            for ticket in {id(t): t for t, _ in step.entries}.values():
                ticket.fail(message)
            return
        finally:
            seconds = time.perf_counter() - started
            metrics.ENGINE_BUSY_SECONDS.labels(step.kind).inc(seconds)
            self._watch.mark_stale()
        metrics.ENGINE_PASSES.labels(step.kind).inc()
        metrics.ENGINE_ROWS.labels(step.kind).inc(step.rows())
        metrics.observe_batch(step.kind, size=len(step.entries), model_seconds=seconds)
        capacity = self.scheduler.capacity if self.scheduler is not None else self._hint_rows
        metrics.observe_pass(step.kind, rows=step.rows(), max_rows=capacity)
        for (ticket, position), output in zip(step.entries, outputs, strict=True):
            ticket.deliver(position, output)

    def _outputs(self, step: Pass) -> list[Any]:
        """Run the pass (once more after an out-of-memory error); images are decoded here,
        on the device's thread."""
        try:
            outputs = self._engine.run_pass(step.units)
        except Exception as exc:
            if not _out_of_memory(exc):
                raise
            log.warning("%s pass: %s; freeing cached memory, retrying once", step.kind, exc)
            del exc
            _free_cached_memory()
            outputs = self._engine.run_pass(step.units)
        if step.kind == "generate":
            return [self._engine.decode(tokens) for tokens in outputs]
        return list(outputs)

    def _oom_hint(self, exc: BaseException) -> str:
        if not _out_of_memory(exc):
            return ""
        return (
            f" (each forward pass holds {self._hint_rows} rows: lower "
            "JANUS_BATCH_BATCH_ROWS or use a larger GPU)"
        )


def _out_of_memory(exc: BaseException) -> bool:
    """Whether the engine failed for want of memory."""
    from janus import JanusRuntimeError  # loaded with the engine that raised

    return isinstance(exc, JanusRuntimeError) and exc.transient


def _free_cached_memory() -> None:
    """Return the allocator's cached blocks (CUDA) so a retry starts from a clean pool."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Pipeline:
    """The stages of one worker process, shared by every chunk it runs."""

    def __init__(
        self,
        load_engine: Callable[[], Any],
        database_url: str,
        *,
        batch_rows: int,
        wait_seconds: float,
        outtake_threads: int,
    ) -> None:
        from worker.fetch import is_transient

        self.watch = JobWatch(database_url)
        self.breaker = StorageBreaker(is_transient=is_transient)
        self.engine_loop = EngineLoop(
            load_engine, wait_seconds=wait_seconds, watch=self.watch, batch_rows_hint=batch_rows
        )
        self.recorder = Recorder(database_url)
        self.outtake = ThreadPoolExecutor(
            max_workers=max(1, outtake_threads), thread_name_prefix="janus-outtake"
        )

    def engine(self) -> Any:
        return self.engine_loop.engine()

    def submit(self, ticket: Ticket) -> None:
        self.engine_loop.submit(ticket)

    def wait_for_room(self, timeout: float = 60.0) -> None:
        """Backpressure: block a chunk thread before it prepares more while the engine
        already has `PENDING_PASSES` passes' worth of rows waiting (bounded memory whatever
        the pool's concurrency; the engine never waits, it has that much queued)."""
        scheduler = self.engine_loop.scheduler
        if scheduler is None:
            return
        deadline = time.monotonic() + timeout
        while scheduler.pending_rows() >= PENDING_PASSES * scheduler.capacity:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)

    def close(self) -> None:
        self.engine_loop.close()
        self.recorder.close()
        self.outtake.shutdown(wait=False)
