"""The lease heartbeat: a chunk slower than its lease keeps its items; items the sweeper took
back are reported by `lifecycle.extend_leases` and not run by the worker that lost them."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

import worker.chunk
from janus_batch import lifecycle
from janus_batch.db import session_scope
from janus_batch.models import Item, utcnow
from janus_batch.states import ItemStatus, JobKind
from tests.worker.helpers import EngineDouble, create_job, get_items, get_job, pop_message
from worker import heartbeat as heartbeat_module
from worker.chunk import run_chunk
from worker.context import PipelineHolder
from worker.generate import GenerateHandler
from worker.heartbeat import LeaseHeartbeat
from worker.sweeper import sweep


def expire(ctx: Any, ids: list[int]) -> None:
    with session_scope(ctx.database_url) as session:
        session.execute(
            update(Item).where(Item.id.in_(ids)).values(lease_until=utcnow() - timedelta(1))
        )


class SlowEngine(EngineDouble):
    """The tiny engine, each pass `seconds` slower; `during` runs inside the first pass."""

    def __init__(self, engine: Any, seconds: float, during: Any = None) -> None:
        super().__init__(engine)
        self.seconds, self.during = seconds, during
        self.ran: list[str] = []

    def run_pass(self, units: list[Any]) -> list[Any]:
        if self.during is not None and not self.ran:
            self.during()
        time.sleep(self.seconds)
        self.ran.extend(unit.request.prompt for unit in units)
        return self.engine.run_pass(units)


class SlowHandler(GenerateHandler):
    """The generate handler, its preparation (the fetch) taking `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def prepare(self, ctx: Any, job: Any, items: list[Any]) -> Any:
        time.sleep(self.seconds)
        return super().prepare(ctx, job, items)


def slow(ctx: Any, tiny_engine: Any, seconds: float, during: Any = None) -> tuple[Any, SlowEngine]:
    engine = SlowEngine(tiny_engine, seconds, during)
    return dataclasses.replace(ctx, engine=lambda: engine, pipelines=PipelineHolder()), engine


def short_lease(ctx: Any, seconds: int = 1) -> Any:
    """The context with a lease below the settings' minimum (not validated)."""
    settings = ctx.settings.model_copy(update={"lease_seconds": seconds})
    return dataclasses.replace(ctx, settings=settings)


def test_slow_chunk_keeps_its_lease_against_a_live_sweeper(
    ctx: Any, tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        worker.chunk, "LeaseHeartbeat", functools.partial(LeaseHeartbeat, interval=0.2)
    )
    ctx, _ = slow(short_lease(ctx), tiny_engine, seconds=1.3)
    job_id = create_job(ctx, JobKind.GENERATE, ["a"])
    _, (_, ids) = pop_message(ctx, "janus.generate")
    swept: Counter[str] = Counter()
    done = threading.Event()

    def sweeper() -> None:
        while not done.is_set():
            swept.update(sweep(ctx))  # the real clock
            time.sleep(0.1)

    thread = threading.Thread(target=sweeper)
    thread.start()
    try:  # the fetch and the pass each outlast the 1 s lease
        counts = run_chunk(ctx, SlowHandler(seconds=1.3), job_id, ids)
    finally:
        done.set()
        thread.join()
        ctx.pipelines.close()

    assert counts == {ItemStatus.SUCCEEDED: 1}
    assert (swept["requeued_leases"], swept["poisoned"]) == (0, 0)
    assert pop_message(ctx, "janus.generate") is None
    [row] = get_items(ctx, job_id)
    assert (row.status, row.attempts) == (ItemStatus.SUCCEEDED, 1)
    assert get_job(ctx, job_id).succeeded == 1


def test_extend_lease_returns_only_owned_ids(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["a", "b", "c"])
    ids = [row.id for row in get_items(ctx, job_id)]
    with session_scope(ctx.database_url) as session:
        claimed = lifecycle.claim(session, job_id, ids, lease_seconds=60)
    expire(ctx, ids[:2])
    assert sweep(ctx)["requeued_leases"] == 2  # taken back

    with session_scope(ctx.database_url) as session:
        assert lifecycle.extend_leases(session, {c.id: c.attempts for c in claimed}, 60) == {ids[2]}
    rows = get_items(ctx, job_id)
    assert [r.status for r in rows] == [ItemStatus.PENDING, ItemStatus.PENDING, "running"]


def test_chunk_does_not_run_items_taken_back(
    ctx: Any, tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        worker.chunk, "LeaseHeartbeat", functools.partial(LeaseHeartbeat, interval=0.2)
    )
    job_id = create_job(ctx, JobKind.GENERATE, ["a", "b", "c"])  # guided: 2 rows, 2 per pass
    _, (_, ids) = pop_message(ctx, "janus.generate")

    def taken_back() -> None:  # while the first pass runs, the lease of the last lapses
        expire(ctx, ids[2:])
        assert sweep(ctx)["requeued_leases"] == 1

    ctx, engine = slow(ctx, tiny_engine, seconds=0.6, during=taken_back)
    try:
        assert run_chunk(ctx, SlowHandler(seconds=0), job_id, ids) == {ItemStatus.SUCCEEDED: 2}
    finally:
        ctx.pipelines.close()
    assert engine.ran == ["a", "b"]  # the heartbeat saw the loss before the next pass
    rows = get_items(ctx, job_id)
    assert [(r.status, r.attempts) for r in rows] == [
        (ItemStatus.SUCCEEDED, 1),
        (ItemStatus.SUCCEEDED, 1),
        (ItemStatus.PENDING, 1),  # re-enqueued for another worker
    ]
    assert pop_message(ctx, "janus.generate") is not None


def test_heartbeat_drops_lost_items_and_survives_db_errors(
    ctx: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["a", "b"])
    ids = [row.id for row in get_items(ctx, job_id)]
    with session_scope(ctx.database_url) as session:
        claimed = lifecycle.claim(session, job_id, ids, lease_seconds=60)
    with LeaseHeartbeat(ctx, job_id, {c.id: c.attempts for c in claimed}, interval=60) as beat:
        expire(ctx, ids[:1])
        assert sweep(ctx)["requeued_leases"] == 1
        assert beat.beat() == {ids[0]}
        assert (beat.owns(ids[0]), beat.owns(ids[1])) == (False, True)

        def broken(*args: Any) -> set[int]:
            raise OperationalError("UPDATE", {}, Exception("database is gone"))

        monkeypatch.setattr(heartbeat_module.lifecycle, "extend_leases", broken)
        with caplog.at_level(logging.WARNING, logger="worker.heartbeat"):
            assert beat.beat() == set()  # logged, not raised
        assert "lease heartbeat failed" in caplog.text
        assert beat.owns(ids[1])
    assert beat.beat() == set()  # stopped: no more beats
