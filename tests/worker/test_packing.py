"""Passes are packed across chunks and jobs, and a request's output never depends on what
shared its pass: a job's images and captions are byte-identical run alone and run while
another job's requests fill the same passes."""

from __future__ import annotations

import io
import threading
from typing import Any

from PIL import Image

from janus_batch.states import ItemStatus, JobKind
from tests.worker.helpers import (
    EngineDouble,
    create_job,
    get_items,
    png_bytes,
    pop_message,
)
from worker.caption import CaptionHandler
from worker.chunk import run_chunk
from worker.context import Context, PipelineHolder
from worker.generate import GenerateHandler

PROMPTS = [{"prompt": "a red fox", "seed": 11}, {"prompt": "a blue lake", "seed": 12}]
OTHERS = [{"prompt": "a grey cat", "seed": 21}, {"prompt": "a green hill", "seed": 22}]


class PassLog(EngineDouble):
    """The tiny engine, noting the prompts (or questions) of every pass."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.passes: list[list[str]] = []

    def run_pass(self, units: list[Any]) -> list[Any]:
        request = units[0].request
        field = "prompt" if hasattr(request, "prompt") else "question"
        self.passes.append([getattr(u.request, field) for u in units])
        return self.engine.run_pass(units)


def _context(ctx: Context, engine: PassLog, **changes: Any) -> Context:
    settings = ctx.settings.model_copy(update={"pass_wait_ms": 1500.0, **changes})
    return Context(
        settings, ctx.storage, ctx.app, engine=lambda: engine, pipelines=PipelineHolder()
    )


def _run_together(ctx: Context, handler: Any, chunks: list[tuple[str, list[int]]]) -> None:
    threads = [threading.Thread(target=run_chunk, args=(ctx, handler, *c)) for c in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def _images(ctx: Context, job_id: str) -> list[tuple[int, bytes]]:
    """(seed, pixel bytes) of each image: the PNG's metadata names its job, the pixels not."""
    rows = get_items(ctx, job_id)
    assert {r.status for r in rows} == {ItemStatus.SUCCEEDED}
    found = []
    for row in rows:
        for image in row.result["images"]:
            with Image.open(io.BytesIO(ctx.storage.get_bytes(image["key"]))) as decoded:
                found.append((image["seed"], decoded.tobytes()))
    return found


def test_generated_images_are_identical_alone_and_packed_with_another_job(
    ctx: Context, tiny_engine: Any
) -> None:
    engine = PassLog(tiny_engine)
    shared = _context(ctx, engine)
    params = {"cfg_weight": 1.0}  # unguided: 1 row per image, 4 per pass
    try:
        alone = create_job(shared, JobKind.GENERATE, PROMPTS, params=params)
        run_chunk(shared, GenerateHandler(), *pop_message(shared, "janus.generate")[1])
        assert engine.passes == [["a red fox", "a blue lake"]]  # a half-full pass, alone

        again = create_job(shared, JobKind.GENERATE, PROMPTS, params=params)
        first = pop_message(shared, "janus.generate")[1]
        other = create_job(shared, JobKind.GENERATE, OTHERS, params=params)
        second = pop_message(shared, "janus.generate")[1]
        _run_together(shared, GenerateHandler(), [first, second])
    finally:
        shared.pipelines.close()
    # the two jobs' chunks shared one full pass
    assert sorted(engine.passes[1]) == ["a blue lake", "a green hill", "a grey cat", "a red fox"]
    assert len(engine.passes) == 2
    assert _images(ctx, again) == _images(ctx, alone)
    assert len(_images(ctx, other)) == 2


def test_captions_are_identical_alone_and_packed_with_another_job(
    ctx: Context, tiny_engine: Any, s3_env: Any
) -> None:
    client = s3_env.client()
    for name, color in (("a.png", (200, 30, 30)), ("b.png", (30, 200, 30))):
        client.put_object(Bucket=s3_env.bucket, Key=name, Body=png_bytes(color))
    images = [f"s3://{s3_env.bucket}/a.png", f"s3://{s3_env.bucket}/b.png"]
    params = {"prompt": "What is it?", "max_new_tokens": 6, "temperature": 0.8}
    engine = PassLog(tiny_engine)
    shared = _context(ctx, engine)
    mine = [{"image": uri, "seed": 5 + i} for i, uri in enumerate(images)]
    theirs = [{"image": uri, "seed": 50 + i, "prompt": "Colour?"} for i, uri in enumerate(images)]
    try:
        alone = create_job(shared, JobKind.CAPTION, mine, params=params)
        run_chunk(shared, CaptionHandler(), *pop_message(shared, "janus.caption")[1])
        again = create_job(shared, JobKind.CAPTION, mine, params=params)
        first = pop_message(shared, "janus.caption")[1]
        other = create_job(shared, JobKind.CAPTION, theirs, params=params)
        second = pop_message(shared, "janus.caption")[1]
        _run_together(shared, CaptionHandler(), [first, second])
    finally:
        shared.pipelines.close()
    mixed = [p for p in engine.passes[1:] if {"What is it?", "Colour?"} <= set(p)]
    assert mixed, engine.passes  # a pass held both jobs' requests

    def captions(job_id: str) -> list[str]:
        return [r.result["caption"] for r in get_items(ctx, job_id)]

    assert captions(again) == captions(alone)
    assert len(captions(other)) == 2
