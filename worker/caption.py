"""Captioning a chunk: fetch the images concurrently, decode them, caption in micro-batches.

An image that cannot be fetched (missing key, 404) or decoded (corrupt, truncated, not an
image) fails only its own item with a readable error; transient fetch errors are retried with
backoff by `worker.fetch` first. Sampling (temperature > 0) uses the item's recorded
`seed`, so resubmitting the same image, question and seed gives the same caption. Result of
an item: `{"caption": text}`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from PIL import Image, UnidentifiedImageError

from janus_batch.lifecycle import Claimed, Outcome
from janus_batch.models import Job
from janus_batch.states import ItemStatus, JobKind
from worker import metrics
from worker.chunk import Handler, Work, failed, run_engine
from worker.context import Context
from worker.fetch import FetchError, fetch_many

DEFAULTS = {"temperature": 0.0, "top_p": 1.0}


def open_image(data: bytes, uri: str) -> Image.Image:
    """Decode `data` fully; ValueError with a readable message if it is not a usable image."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except UnidentifiedImageError:
        raise ValueError(f"cannot read image {uri}: cannot identify image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {uri}: {exc}") from None


class CaptionHandler(Handler):
    """The caption-specific steps of a chunk."""

    kind = JobKind.CAPTION

    def prepare(
        self, ctx: Context, job: Job, items: list[Claimed]
    ) -> tuple[list[Work], list[Outcome]]:
        settings = ctx.settings
        with metrics.FETCH_SECONDS.time():
            fetched = fetch_many(
                [item.input["uri"] for item in items],
                concurrency=settings.fetch_concurrency,
                storage=ctx.storage,
                endpoint_url=settings.s3_endpoint_url,
                region=settings.s3_region,
                max_retries=settings.max_retries,
            )
        work: list[Work] = []
        errors: list[Outcome] = []
        for item, data in zip(items, fetched, strict=True):
            if isinstance(data, FetchError):
                errors.append(failed(item, str(data)))
            else:
                work.append(Work(item, data))
        return work, errors

    def batches(self, ctx: Context, work: list[Work]) -> Iterator[list[Work]]:
        size = ctx.settings.batch_rows
        for start in range(0, len(work), size):
            yield work[start : start + size]

    def run(self, ctx: Context, job: Job, batch: list[Work]) -> list[Outcome]:
        from janus import CaptionRequest

        params: dict[str, Any] = {**DEFAULTS, **(job.params or {})}
        outcomes: dict[int, Outcome] = {}
        ready: list[tuple[Work, CaptionRequest]] = []
        for w in batch:
            try:
                image = open_image(w.payload, w.item.input.get("image") or w.item.input["uri"])
                request = CaptionRequest(
                    image=image,
                    question=w.item.input["prompt"],
                    max_new_tokens=int(params["max_new_tokens"]),
                    temperature=float(params["temperature"]),
                    top_p=float(params["top_p"]),
                    seed=int(w.item.input["seed"]),
                )
            except ValueError as exc:  # JanusRequestError is a ValueError too
                outcomes[w.item.id] = failed(w.item, str(exc))
                continue
            ready.append((w, request))
        if ready:
            results = run_engine(self.kind, ctx.engine(), [request for _, request in ready])
            for (w, _), result in zip(ready, results, strict=True):
                if result.error is not None:
                    outcomes[w.item.id] = failed(w.item, result.error)
                else:
                    outcomes[w.item.id] = Outcome(
                        w.item, ItemStatus.SUCCEEDED, result={"caption": result.text}
                    )
        return [outcomes[w.item.id] for w in batch]
