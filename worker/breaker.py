"""The storage circuit breaker of a worker process: storage down pauses work, never fails it.

A transient storage error (connection refused, timeout, 5xx, SlowDown) that outlasted the
quick retries `trip`s the breaker: it logs once, shows in metrics and in the worker's
presence, and while it is open chunk threads wait before claiming new work
(`wait_until_usable`). While it is open a prober thread runs the probe of the last trip
after each cool-down (1 s, doubling up to `max_cool`, 5 s): a `ping` or a tiny write to
storage, a single fetch of the input that failed. An answer that is not a transient error
closes the breaker and wakes every waiting thread; the prober then ends.

    breaker.trip("cannot write s3://b/x: Could not connect", probe=write_probe)
    breaker.wait_until_usable(deadline)   # returns at once when closed
    breaker.success()                      # an operation worked: closed
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
        self._opened = 0.0
        self._reason = ""
        self._probe: Probe | None = None
        self.trips = 0
        """How many times the breaker opened (for tests and logs)."""

    @property
    def down_since(self) -> datetime | None:
        """When storage was first seen down (None while it answers)."""
        return self._down_since

    @property
    def opened(self) -> float | None:
        """The monotonic time the breaker opened (None while closed)."""
        return self._opened if self._down_since is not None else None

    @property
    def reason(self) -> str:
        """The error that opened the breaker ("" while closed)."""
        return self._reason

    def trip(self, reason: str, probe: Probe | None = None) -> None:
        """A transient storage error outlasted the quick retries: open (or keep open). The
        latest probe given is the one the prober runs."""
        with self._cond:
            if probe is not None:
                self._probe = probe
            self._reason = reason
            if self._down_since is not None:
                return
            self._down_since = datetime.now(UTC)
            self._opened = time.monotonic()
            self.trips += 1
        metrics.STORAGE_UP.set(0)
        log.warning("storage unreachable, new work paused until it answers: %s", reason)
        threading.Thread(target=self._prober, name="janus-storage-probe", daemon=True).start()

    def success(self) -> None:
        """A storage operation worked: close."""
        if self._down_since is None:
            return
        with self._cond:
            if self._down_since is None:
                return
            seconds = time.monotonic() - self._opened
            self._down_since = None
            self._reason = ""
            self._probe = None
            self._cond.notify_all()
        metrics.STORAGE_UP.set(1)
        log.warning("storage answers again after %.0f s: work resumes", seconds)

    def wait_until_usable(self, deadline: float | None = None) -> bool:
        """Block while open; True once closed, False if the monotonic `deadline` passed
        first."""
        with self._cond:
            while self._down_since is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 1.0)
            return True

    def _prober(self) -> None:
        """While open: probe after each cool-down; any answer but a transient error closes."""
        cool = self._min_cool
        while True:
            time.sleep(cool)
            with self._cond:
                if self._down_since is None:
                    return
                probe = self._probe
            try:
                if probe is not None:
                    probe()
            except BaseException as exc:  # never lose the prober: it alone closes the breaker
                if isinstance(exc, Exception) and not self._is_transient(exc):
                    self.success()  # storage answered (403, 404...): it is reachable
                    return
                cool = min(self._max_cool, cool * 2)
                continue
            self.success()
            return
