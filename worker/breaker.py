"""The storage circuit breaker of a worker process: storage down pauses work, never fails it.

A transient storage error (connection refused, timeout, 5xx, SlowDown) that outlasted the
quick retries `trip`s the breaker: it logs once, shows in metrics and in the worker's
presence, and while it is open chunk threads wait before claiming new work
(`wait_until_usable`). After a cool-down (1 s, doubling up to `max_cool`, 5 s) one waiting thread
runs the probe of the last trip (a `ping` of the storage, a single fetch of the input that
failed); an answer that is not a transient error closes the breaker and every thread goes on.

    breaker.trip("cannot write s3://b/x: Could not connect", probe=storage.ping)
    breaker.wait_until_usable()      # returns at once when closed
    breaker.success()                 # an operation worked: closed
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from worker import metrics

log = logging.getLogger(__name__)

Probe = Callable[[], object]


class StorageBreaker:
    """Open while storage answers only with transient errors; thread-safe."""

    def __init__(
        self,
        *,
        is_transient: Callable[[BaseException], bool],
        min_cool: float = 1.0,
        max_cool: float = 5.0,
    ) -> None:
        self._is_transient = is_transient
        self._min_cool = min_cool
        self._max_cool = max_cool
        self._cond = threading.Condition()
        self._down_since: datetime | None = None
        self._reason = ""
        self._probe: Probe | None = None
        self._cool = min_cool
        self._next_probe = 0.0
        self._probing = False

    @property
    def down_since(self) -> datetime | None:
        """When storage was first seen down (None while it answers)."""
        return self._down_since

    @property
    def reason(self) -> str:
        """The error that opened the breaker ("" while closed)."""
        return self._reason

    def trip(self, reason: str, probe: Probe | None = None) -> None:
        """A transient storage error outlasted the quick retries: open (or keep open)."""
        with self._cond:
            if self._probe is None or probe is not None:
                self._probe = probe
            self._reason = reason
            if self._down_since is None:
                self._down_since = datetime.now(UTC)
                self._cool = self._min_cool
                self._next_probe = time.monotonic() + self._cool
                metrics.STORAGE_UP.set(0)
                log.warning("storage unreachable, new work paused until it answers: %s", reason)

    def success(self) -> None:
        """A storage operation worked: close."""
        if self._down_since is None:
            return
        with self._cond:
            if self._down_since is None:
                return
            seconds = (datetime.now(UTC) - self._down_since).total_seconds()
            self._down_since = None
            self._reason = ""
            self._probe = None
            metrics.STORAGE_UP.set(1)
            log.warning("storage answers again after %.0f s: work resumes", seconds)
            self._cond.notify_all()

    def wait_until_usable(self, deadline: float | None = None) -> bool:
        """Block while open, probing after each cool-down; True once closed, False if the
        monotonic `deadline` passed first."""
        while True:
            with self._cond:
                if self._down_since is None:
                    return True
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                if self._probing or now < self._next_probe:
                    wait = self._next_probe - now if not self._probing else self._min_cool
                    if deadline is not None:
                        wait = min(wait, deadline - now)
                    self._cond.wait(max(0.05, wait))
                    continue
                self._probing = True
                probe = self._probe
            self._run_probe(probe)

    def _run_probe(self, probe: Probe | None) -> None:
        try:
            if probe is not None:
                probe()
        except Exception as exc:
            if self._is_transient(exc):
                with self._cond:
                    self._probing = False
                    self._cool = min(self._max_cool, self._cool * 2)
                    self._next_probe = time.monotonic() + self._cool
                    self._reason = str(exc)
                    self._cond.notify_all()
                return
        with self._cond:
            self._probing = False
        self.success()
