"""The pass scheduler: which ready requests form the next forward pass.

Chunk threads `submit` tickets (one request each, already prepared into the engine's units);
the engine thread asks `next_pass` for the next pass. A pass holds units of one kind and one
shape key (so outputs never depend on neighbours), from any chunk or job, up to the engine's
row capacity. A full group goes first (highest job priority, then the oldest); when none can
fill a pass, the scheduler waits up to `wait_seconds` for more units before running the
oldest part-full. Within a pass, jobs take turns (higher priority first), so a small job is
not queued behind a big job's backlog. Units of a ticket whose job is
being cancelled (or whose lease was taken back) are dropped when a pass is formed.

This module knows nothing of torch, Celery or SQL: it orders work, the engine loop runs it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Ticket:
    """One request on its way through the engine: its units, their outputs as they come.

    `on_done(ticket)` runs once, on the engine thread, when every unit has an output or the
    ticket failed (`error`) or was dropped (`dropped`): keep it short (hand off to a pool).
    """

    kind: str
    units: list[Any]
    rows: Callable[[Any], int]
    on_done: Callable[[Ticket], None]
    job_id: str = ""
    priority: int = 0
    keep: Callable[[], bool] = lambda: True
    """False once the ticket's work is no longer wanted (job cancelled, lease lost)."""
    tag: Any = None
    outputs: list[Any] = field(default_factory=list)
    error: str | None = None
    dropped: bool = False
    submitted: float = 0.0
    _left: int = 0
    _finished: bool = False

    def __post_init__(self) -> None:
        self.outputs = [None] * len(self.units)
        self._left = len(self.units)

    def deliver(self, position: int, output: Any) -> None:
        """The output of unit `position` (engine thread)."""
        self.outputs[position] = output
        self._left -= 1
        if self._left == 0:
            self._finish()

    def fail(self, error: str) -> None:
        """The ticket's pass failed: every unit of it fails with `error`."""
        if self.error is None:
            self.error = error
        self._finish()

    def drop(self) -> None:
        """The work is no longer wanted: nothing more runs for it."""
        self.dropped = True
        self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self.on_done(self)


@dataclass(eq=False)
class _Queued:
    ticket: Ticket
    position: int
    seq: int

    @property
    def unit(self) -> Any:
        return self.ticket.units[self.position]


@dataclass
class Pass:
    """Units to run together: (ticket, position) pairs of one kind and shape key."""

    kind: str
    entries: list[tuple[Ticket, int]]

    @property
    def units(self) -> list[Any]:
        return [ticket.units[position] for ticket, position in self.entries]

    def rows(self) -> int:
        return sum(ticket.rows(ticket.units[position]) for ticket, position in self.entries)


class PassScheduler:
    """Thread-safe: any thread submits, the engine thread takes passes."""

    def __init__(
        self, capacity: int, wait_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self._clock = clock
        self._groups: dict[tuple[str, Hashable], deque[_Queued]] = {}
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False

    def submit(self, ticket: Ticket) -> None:
        """Queue the units of a ticket (a ticket with no units completes at once)."""
        if not ticket.units:
            ticket._finish()
            return
        with self._cond:
            ticket.submitted = self._clock()
            for position, unit in enumerate(ticket.units):
                group = self._groups.setdefault((ticket.kind, unit.shape_key), deque())
                group.append(_Queued(ticket, position, next(self._seq)))
            self._cond.notify_all()

    def pending_rows(self) -> int:
        """Rows waiting for a pass (for backpressure and metrics)."""
        with self._cond:
            return sum(q.ticket.rows(q.unit) for g in self._groups.values() for q in g)

    def close(self) -> None:
        """Wake the engine thread for good: next_pass returns None once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def next_pass(self, timeout: float | None = None) -> Pass | None:
        """The next pass to run; None when nothing came within `timeout` (or closed)."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                self._drop_unwanted()
                ready, wait = self._ready_group()
                if ready is not None:
                    return self._take(*ready)
                if wait is None and self._closed:
                    return None
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def _ready_group(
        self,
    ) -> tuple[tuple[tuple[str, Hashable], deque[_Queued]] | None, float | None]:
        """A group to run now: by priority, then the age of its oldest unit, the first that is
        full or whose oldest unit waited `wait_seconds`; otherwise (None, seconds until one
        will)."""
        live = sorted(
            ((k, g) for k, g in self._groups.items() if g),
            key=lambda kg: (-kg[1][0].ticket.priority, kg[1][0].seq),
        )
        if not live:
            return None, None
        now = self._clock()
        waits = [self.wait_seconds - (now - self._head_time(g)) for _, g in live]
        for (key, group), wait in zip(live, waits, strict=True):
            # in order of priority, then age: the first group that is full, or has waited
            # long enough, runs (an old part-full group is never starved by full ones)
            if wait <= 0 or self._closed or self._fill(group) >= self.capacity:
                return (key, group), None
        return None, min(waits)

    def _head_time(self, group: deque[_Queued]) -> float:
        return group[0].ticket.submitted

    def _fill(self, group: deque[_Queued]) -> int:
        """Rows the group can put in one pass (first fit, in queue order)."""
        rows = 0
        for queued in group:
            need = queued.ticket.rows(queued.unit)
            if rows + need <= self.capacity:
                rows += need
            if rows == self.capacity:
                break
        return rows

    def _take(self, key: tuple[str, Hashable], group: deque[_Queued]) -> Pass:
        """Remove and return a pass's worth of the group: higher priority first, then the
        jobs in turn (each job's first waiting unit, then each job's second, ...), so a small
        job's requests ride in the next pass even behind a big job's backlog."""
        turn: dict[str, int] = {}
        ranked = []
        for queued in group:
            job = queued.ticket.job_id
            ranked.append((-queued.ticket.priority, turn.get(job, 0), queued.seq, queued))
            turn[job] = turn.get(job, 0) + 1
        ranked.sort(key=lambda r: r[:3])
        taken: list[_Queued] = []
        rows = 0
        for *_, queued in ranked:
            need = queued.ticket.rows(queued.unit)
            if rows + need <= self.capacity:
                taken.append(queued)
                rows += need
            if rows == self.capacity:
                break
        chosen = {id(q) for q in taken}
        self._groups[key] = deque(q for q in group if id(q) not in chosen)
        if not self._groups[key]:
            del self._groups[key]
        taken.sort(key=lambda q: q.seq)
        return Pass(key[0], [(q.ticket, q.position) for q in taken])

    def _drop_unwanted(self) -> None:
        """Remove the units of tickets no longer wanted, or already failed; drop them."""
        dropped: dict[int, Ticket] = {}
        for key in list(self._groups):
            kept: deque[_Queued] = deque()
            for queued in self._groups[key]:
                ticket = queued.ticket
                if ticket.dropped or ticket.error is not None:
                    continue
                if id(ticket) in dropped or not ticket.keep():
                    dropped[id(ticket)] = ticket
                    continue
                kept.append(queued)
            if kept:
                self._groups[key] = kept
            else:
                del self._groups[key]
        for ticket in dropped.values():
            ticket.drop()
