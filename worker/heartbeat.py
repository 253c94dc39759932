"""Lease heartbeat: keeps the items of a running chunk leased while it fetches and runs.

`chunk._checkpoint` extends the lease only between micro-batches; a fetch or a micro-batch
longer than `settings.lease_seconds` would let the sweeper hand the items to another worker
(and, after `MAX_ATTEMPTS`, fail them as "worker lost" although no worker died). While a chunk
runs, a daemon thread extends the lease of its still-owned items every `interval` (a third
of the lease by default) in its own short transaction, the same conditional UPDATE as
`extend_lease` (id, status running, attempts). Items the UPDATE no longer matches were taken
back: they are dropped from `owned`, and the chunk skips them.

The chunk wraps each of its own recording transactions in `hold()`, so a beat never runs at
the same time (no lock cycle between the two transactions on PostgreSQL, and an item the
chunk has just finished is never mistaken for a lost one). A database error in a beat is
logged and the next beat tries again: it never reaches the chunk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Self

from janus_batch import lifecycle
from janus_batch.db import session_scope
from worker.context import Context

log = logging.getLogger(__name__)


class LeaseHeartbeat:
    """Context manager: extend the lease of `owned` ({item id: attempts}) every `interval`
    seconds from a daemon thread until exit."""

    def __init__(
        self,
        ctx: Context,
        job_id: str,
        owned: Mapping[int, int],
        interval: float | None = None,
    ) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.lease_seconds = ctx.settings.lease_seconds
        self.interval = interval if interval is not None else self.lease_seconds / 3
        self._owned = dict(owned)
        self._lost: set[int] = set()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._thread = threading.Thread(
            target=self._loop, name=f"lease-heartbeat-{self.job_id}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the thread; waits for a beat under way (bounded: a hung database call is
        left to its daemon thread, which does nothing once it returns)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def owns(self, item_id: int) -> bool:
        """Whether the item is still this worker's (not taken back, not released)."""
        with self._lock:
            return item_id in self._owned

    def taken_back(self) -> set[int]:
        """The items a beat found taken back by the sweeper (not merely released)."""
        with self._lock:
            return set(self._lost)

    def release(self, item_ids: Iterable[int]) -> None:
        """Stop extending these items (finished by the chunk, or found lost by it)."""
        with self._lock:
            for item_id in item_ids:
                self._owned.pop(item_id, None)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """No beat runs inside this block (the chunk's own recording transactions)."""
        with self._lock:
            yield

    def beat(self) -> set[int]:
        """Extend the leases once; returns the ids found lost (and dropped). Never raises.
        The SQL runs outside the lock, so `owns` (asked before every pass) never waits on it."""
        with self._lock:
            if self._stop.is_set() or not self._owned:
                return set()
            owned = dict(self._owned)
        try:
            with session_scope(self.ctx.database_url) as session:
                still = lifecycle.extend_leases(session, owned, self.lease_seconds)
        except Exception as exc:
            log.warning(
                "job=%s lease heartbeat failed (%d items): %s: %s",
                self.job_id,
                len(owned),
                type(exc).__name__,
                exc,
            )
            return set()
        lost = set(owned) - still
        with self._lock:
            lost &= set(self._owned)  # released meanwhile (recorded): not lost
            for item_id in lost:
                del self._owned[item_id]
            self._lost |= lost
        log.debug("job=%s lease of %d items extended", self.job_id, len(still))
        if lost:
            log.warning(
                "job=%s lease of %d items taken back (ids %s): they are not run here",
                self.job_id,
                len(lost),
                sorted(lost),
            )
        return lost

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()
