"""A micro-batch that runs out of memory is retried once; a second time its items fail with a
message naming the setting to lower; other errors fail the micro-batch at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from janus import JanusRuntimeError
from janus_batch.states import ItemStatus, JobKind
from tests.worker.helpers import EngineDouble, create_job, get_items, get_job, pop_message
from worker.chunk import run_chunk
from worker.context import Context
from worker.generate import GenerateHandler

OOM = "out of memory on cpu: tried to allocate 2.00 GiB"


@pytest.fixture
def ctx(make_ctx: Callable[..., Context]) -> Context:
    """Every pass here is full (8 prompts, 4 rows each): a long pass wait keeps them full
    however slowly a busy machine prepares the chunk's requests one by one (a 30 ms wait let
    a part-full pass go once under load)."""
    return make_ctx(pass_wait_ms="3000")


class OomEngine(EngineDouble):
    """The tiny engine, raising the engine's out-of-memory error when `fails(prompts)`."""

    def __init__(self, engine: Any, fails: Callable[[list[str]], bool]) -> None:
        super().__init__(engine)
        self.fails = fails
        self.calls: list[list[str]] = []

    def run_pass(self, units: list[Any]) -> list[Any]:
        prompts = [u.request.prompt for u in units]
        self.calls.append(prompts)
        if self.fails(prompts):
            raise JanusRuntimeError(OOM)
        return self.engine.run_pass(units)


def run_with(ctx: Context, tiny_engine: Any, fails: Callable[[list[str]], bool]) -> Any:
    """Eight unguided prompts (4 per micro-batch with 4 rows) in one chunk, run by OomEngine."""
    prompts = ["p0", "p1", "huge", "p3", "p4", "p5", "p6", "p7"]
    job_id = create_job(ctx, JobKind.GENERATE, prompts, params={"cfg_weight": 1.0})
    _, chunk = pop_message(ctx, "janus.generate")
    engine = OomEngine(tiny_engine, fails)
    oom_ctx = Context(ctx.settings, ctx.storage, ctx.app, engine=lambda: engine)
    counts = run_chunk(oom_ctx, GenerateHandler(), *chunk)
    return job_id, engine, counts


def test_out_of_memory_once_is_retried_and_succeeds(ctx: Context, tiny_engine: Any) -> None:
    first = [True]

    def once(_: list[str]) -> bool:
        raise_now, first[0] = first[0], False
        return raise_now

    job_id, engine, counts = run_with(ctx, tiny_engine, fails=once)
    assert counts == {ItemStatus.SUCCEEDED: 8}
    assert [len(call) for call in engine.calls] == [4, 4, 4]
    assert get_job(ctx, job_id).succeeded == 8


def test_out_of_memory_twice_fails_only_that_micro_batch_with_a_hint(
    ctx: Context, tiny_engine: Any
) -> None:
    job_id, engine, counts = run_with(ctx, tiny_engine, fails=lambda prompts: "huge" in prompts)
    assert counts == {ItemStatus.SUCCEEDED: 4, ItemStatus.FAILED: 4}
    assert engine.calls[:2] == [["p0", "p1", "huge", "p3"]] * 2
    assert [len(call) for call in engine.calls[2:]] == [4]
    rows = get_items(ctx, job_id)
    assert [r.status for r in rows] == ["failed"] * 4 + ["succeeded"] * 4
    assert rows[2].error == (
        f"model error: JanusRuntimeError: {OOM} (each forward pass holds "
        f"{ctx.settings.batch_rows} rows: lower JANUS_BATCH_BATCH_ROWS or use a larger GPU)"
    )


def test_other_errors_fail_the_micro_batch_without_retry(ctx: Context, tiny_engine: Any) -> None:
    def broken(prompts: list[str]) -> bool:
        if "huge" in prompts:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return False

    job_id, engine, counts = run_with(ctx, tiny_engine, fails=broken)
    assert counts == {ItemStatus.SUCCEEDED: 4, ItemStatus.FAILED: 4}
    assert [len(call) for call in engine.calls] == [4, 4]
    rows = get_items(ctx, job_id)
    assert rows[0].error == (
        "model error: RuntimeError: CUDA error: an illegal memory access was encountered"
    )
