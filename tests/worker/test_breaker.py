"""The storage circuit breaker: closed by default, opened by a trip, closed again by the
first probe that storage answers; one probe at a time; a deadline bounds the wait."""

from __future__ import annotations

import itertools
import threading
import time

from janus_batch.storage import StorageError, TransientStorageError
from worker import metrics
from worker.breaker import StorageBreaker
from worker.fetch import is_transient


def breaker() -> StorageBreaker:
    return StorageBreaker(is_transient=is_transient, min_cool=0.05, max_cool=0.2)


def test_closed_breaker_lets_everything_through() -> None:
    b = breaker()
    assert b.down_since is None and b.wait_until_usable(deadline=time.monotonic())


def test_probe_that_answers_closes_it_and_wakes_every_waiter() -> None:
    b = breaker()
    calls: list[float] = []
    up = threading.Event()

    def probe() -> None:
        calls.append(time.monotonic())
        if not up.is_set():
            raise TransientStorageError("Could not connect to the endpoint URL")

    b.trip("cannot write s3://b/x: Could not connect", probe=probe)
    assert b.down_since is not None and metrics.STORAGE_UP._value.get() == 0
    assert not b.wait_until_usable(deadline=time.monotonic() + 0.3)  # still down: gives up
    waiters = [threading.Thread(target=b.wait_until_usable) for _ in range(4)]
    for w in waiters:
        w.start()
    time.sleep(0.3)
    up.set()
    for w in waiters:
        w.join(5)
    assert not any(w.is_alive() for w in waiters)
    assert b.down_since is None and b.reason == "" and metrics.STORAGE_UP._value.get() == 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
    assert all(gap >= 0.04 for gap in gaps)  # one probe at a time, after each cool-down


def test_a_permanent_answer_also_means_storage_is_back() -> None:
    """A probe that gets an answer (even a 403 or a 404) reached storage: closed."""
    b = breaker()

    def probe() -> None:
        raise StorageError("AccessDenied (HTTP 403)")

    b.trip("Could not connect", probe=probe)
    assert b.wait_until_usable(deadline=time.monotonic() + 5)
    assert b.down_since is None
