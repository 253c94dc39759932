"""The pass scheduler alone (no engine, no database): what forms the next pass."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from worker.scheduler import PassScheduler, Ticket


@dataclass(frozen=True)
class Unit:
    shape_key: int
    rows: int = 1


def ticket(
    kind: str, *shapes: int, rows: int = 1, priority: int = 0, keep: Any = None, log: Any = None
) -> Ticket:
    return Ticket(
        kind=kind,
        units=[Unit(s, rows) for s in shapes],
        rows=lambda u: u.rows,
        on_done=(log.append if log is not None else (lambda t: None)),
        priority=priority,
        keep=keep or (lambda: True),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_full_pass_goes_at_once_and_never_mixes_kinds_or_shapes() -> None:
    scheduler = PassScheduler(capacity=4, wait_seconds=10)
    a, b = ticket("caption", 1, 1, 1), ticket("caption", 1, 2, 1)
    c = ticket("generate", 1, 1, 1, 1)
    for t in (a, b, c):
        scheduler.submit(t)
    first = scheduler.next_pass(timeout=0)
    assert first is not None and first.kind == "caption"
    assert [(t is a, p) for t, p in first.entries] == [
        (True, 0),
        (True, 1),
        (True, 2),
        (False, 0),
    ]  # fmt: skip  four shape-1 captions of two tickets: one full pass
    second = scheduler.next_pass(timeout=0)
    assert second is not None and second.kind == "generate" and second.rows() == 4
    assert scheduler.next_pass(timeout=0) is None  # b's shape-2 unit waits for company


def test_a_part_full_pass_waits_for_more_then_runs() -> None:
    clock = Clock()
    scheduler = PassScheduler(capacity=4, wait_seconds=0.05, clock=clock)
    scheduler.submit(ticket("caption", 1))
    assert scheduler.next_pass(timeout=0) is None  # waiting for a fuller pass
    clock.now = 0.06
    step = scheduler.next_pass(timeout=0)
    assert step is not None and step.rows() == 1


def test_guided_units_fill_by_rows_and_a_late_arrival_joins() -> None:
    scheduler = PassScheduler(capacity=4, wait_seconds=5)
    scheduler.submit(ticket("generate", 7, rows=2))
    joined = threading.Timer(0.05, lambda: scheduler.submit(ticket("generate", 7, rows=2)))
    joined.start()
    step = scheduler.next_pass(timeout=5)
    joined.join()
    assert step is not None and step.rows() == 4 and len(step.entries) == 2


def test_higher_priority_jobs_go_first() -> None:
    scheduler = PassScheduler(capacity=2, wait_seconds=0)
    low = ticket("caption", 1, 1, priority=0)
    high = ticket("caption", 1, 1, priority=5)
    scheduler.submit(low)
    scheduler.submit(high)
    step = scheduler.next_pass(timeout=0)
    assert step is not None and {t is high for t, _ in step.entries} == {True}


def test_unwanted_tickets_are_dropped_before_their_pass() -> None:
    done: list[Ticket] = []
    wanted = [True]
    scheduler = PassScheduler(capacity=4, wait_seconds=0)
    cancelled = ticket("caption", 1, 1, keep=lambda: wanted[0], log=done)
    kept = ticket("caption", 1, log=done)
    scheduler.submit(cancelled)
    scheduler.submit(kept)
    wanted[0] = False  # its job is being cancelled
    step = scheduler.next_pass(timeout=0)
    assert step is not None and [t is kept for t, _ in step.entries] == [True]
    assert done == [cancelled] and cancelled.dropped
    for (t, position), output in zip(step.entries, ["text"], strict=True):
        t.deliver(position, output)
    assert done == [cancelled, kept] and kept.outputs == ["text"]


def test_jobs_take_turns_within_a_pass() -> None:
    scheduler = PassScheduler(capacity=4, wait_seconds=0)
    big = ticket("caption", *[1] * 6)
    big.job_id = "big"
    small = ticket("caption", 1, 1)
    small.job_id = "small"
    scheduler.submit(big)
    scheduler.submit(small)  # arrived after six units of the big job
    step = scheduler.next_pass(timeout=0)
    assert step is not None
    assert sorted(t.job_id for t, _ in step.entries) == ["big", "big", "small", "small"]
