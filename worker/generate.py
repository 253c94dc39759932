"""Generating a chunk: build requests from the self-contained item inputs, render them in
micro-batches that fill the engine's rows, encode and upload the images concurrently.

Image k of item idx goes to `<output_prefix>/images/<idx:08d>_<k>.<ext>`: the same item
always writes the same keys, so a retry overwrites and never duplicates. Result of an item:
`{"images": [{"key", "uri", "seed", "index"}], "format": ext}`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from janus_batch.lifecycle import Claimed, Outcome
from janus_batch.models import Job
from janus_batch.states import ItemStatus, JobKind
from worker import metrics
from worker.chunk import Handler, Work, failed, run_engine
from worker.context import Context
from worker.encode import EncodeSpec, encode_image, image_format
from worker.fetch import retry_transient

log = logging.getLogger(__name__)

REQUEST_FIELDS = ("prompt", "n", "seed", "cfg_weight", "temperature", "top_k", "top_p")


def image_key(output_prefix: str, idx: int, k: int, ext: str) -> str:
    """The storage key of image `k` of item `idx`."""
    return f"{output_prefix.rstrip('/')}/images/{idx:08d}_{k}.{ext}"


def request_rows(request: Any) -> int:
    """Forward-pass rows a request needs: one per image, two when guided."""
    return request.n * (2 if request.guided else 1)


class GenerateHandler(Handler):
    """The generate-specific steps of a chunk."""

    kind = JobKind.GENERATE

    def prepare(
        self, ctx: Context, job: Job, items: list[Claimed]
    ) -> tuple[list[Work], list[Outcome]]:
        from janus import GenerateRequest

        work: list[Work] = []
        errors: list[Outcome] = []
        for item in items:
            fields = {k: item.input[k] for k in REQUEST_FIELDS if item.input.get(k) is not None}
            try:
                work.append(Work(item, GenerateRequest(**fields)))
            except (TypeError, ValueError) as exc:
                errors.append(failed(item, f"invalid request: {exc}"))
        return work, errors

    def batches(self, ctx: Context, work: list[Work]) -> Iterator[list[Work]]:
        """Consecutive requests whose rows fit `batch_rows` (a larger request goes alone)."""
        batch: list[Work] = []
        rows = 0
        for w in work:
            need = request_rows(w.payload)
            if batch and rows + need > ctx.settings.batch_rows:
                yield batch
                batch, rows = [], 0
            batch.append(w)
            rows += need
        if batch:
            yield batch

    def run(self, ctx: Context, job: Job, batch: list[Work]) -> list[Outcome]:
        engine = ctx.engine()
        results = run_engine(self.kind, engine, [w.payload for w in batch])
        fmt = image_format((job.params or {}).get("format"))
        uploads = []
        for w, result in zip(batch, results, strict=True):
            if result.error is None:
                uploads.extend((w, generated) for generated in result.images)
        stored = _store_all(ctx, job, engine.model_name, fmt, uploads) if uploads else []
        by_item: dict[int, list[dict[str, Any] | str]] = {}
        for (w, _), entry in zip(uploads, stored, strict=True):
            by_item.setdefault(w.item.id, []).append(entry)
        outcomes = []
        for w, result in zip(batch, results, strict=True):
            if result.error is not None:
                outcomes.append(failed(w.item, result.error))
                continue
            entries = by_item.get(w.item.id, [])
            problems = [e for e in entries if isinstance(e, str)]
            if problems:
                outcomes.append(failed(w.item, problems[0]))
            else:
                result_json = {"images": entries, "format": fmt.ext}
                outcomes.append(Outcome(w.item, ItemStatus.SUCCEEDED, result=result_json))
        return outcomes


def _store_all(
    ctx: Context, job: Job, model: str, fmt: EncodeSpec, uploads: list[tuple[Work, Any]]
) -> list[dict[str, Any] | str]:
    """Encode and upload a micro-batch's images concurrently (timed for the metrics)."""
    with (
        metrics.UPLOAD_SECONDS.time(),
        ThreadPoolExecutor(
            max_workers=max(1, min(ctx.settings.upload_concurrency, len(uploads))),
            thread_name_prefix="janus-upload",
        ) as pool,
    ):
        return list(pool.map(lambda u: _store(ctx, job, model, fmt, *u), uploads))


def _store(
    ctx: Context, job: Job, model: str, fmt: EncodeSpec, w: Work, generated: Any
) -> dict[str, Any] | str:
    """Encode and upload one image; its result entry, or an error message."""
    request = w.payload
    key = image_key(job.output_prefix, w.item.idx, generated.index, fmt.ext)
    metadata = {
        "prompt": request.prompt,
        "seed": generated.seed,
        "index": generated.index,
        "cfg_weight": request.cfg_weight,
        "temperature": request.temperature,
        "top_k": request.top_k,
        "top_p": request.top_p,
        "model": model,
        "job_id": job.id,
        "item_idx": w.item.idx,
    }
    try:
        data = encode_image(generated.image, fmt, metadata)
        retry_transient(
            lambda: ctx.storage.put_bytes(key, data, fmt.content_type),
            attempts=ctx.settings.max_retries + 1,
        )
    except Exception as exc:
        log.warning("job=%s idx=%d cannot store %s: %s", job.id, w.item.idx, key, exc)
        return f"cannot store image {generated.index} at {key}: {exc}"
    return {
        "key": key,
        "uri": ctx.storage.uri(key),
        "seed": generated.seed,
        "index": generated.index,
    }
