"""Captioning a chunk: fetch the images concurrently, decode them into requests (on the
chunk's thread); the engine thread captions them in passes shared with other chunks.

An image that cannot be fetched (missing key, 404) or decoded (corrupt, truncated, not an
image) fails only its own item with a readable error. Transient fetch errors are retried with
backoff by `worker.fetch` first; one that outlasts those retries defers the item (it waits and
is tried again, `worker.chunk.deferred`), never fails it, and one of storage pauses the
worker's new work until storage answers (`worker.breaker`). Sampling (temperature > 0) uses
the item's recorded `seed`, so resubmitting the same image, question and seed gives the same
caption. Result of an item: `{"caption": text}`, or `{"captions": {name: text}}` for an item
asked several prompts (`prompts` in its input: each prompt of the image is its own request,
batched with everything else). A WebDataset sample's image is read from inside its shard: its
input's `range` ([offset, size]) is fetched alone with a ranged GET. A parquet row's image
bytes (`parquet`: [row group, index, column]) are read from its file's row group, the image
column alone, once for all the chunk's items in that row group (`worker.parquet`).
"""

from __future__ import annotations

from typing import Any

from PIL import Image, UnidentifiedImageError

from janus_batch.egress import EgressPolicy
from janus_batch.images import open_bounded
from janus_batch.lifecycle import Claimed, Outcome
from janus_batch.models import Job
from janus_batch.states import ItemStatus, JobKind
from worker import metrics
from worker.chunk import Handler, Work, deferred, failed
from worker.context import Context
from worker.datasets import DataFile, Opener
from worker.fetch import MAX_BYTES, FetchError, fetch_many, fetch_uri
from worker.scheduler import Ticket

DEFAULTS = {"temperature": 0.0, "top_p": 1.0}


def open_image(data: bytes, uri: str, size: int | None, *, max_pixels: int) -> Image.Image:
    """Decode `data`; ValueError with a readable message if it is not a usable image or has
    more than `max_pixels` pixels (checked from its header, before decoding). A JPEG is
    decoded at the smallest DCT scale still at least `size` on each side (`draft`), any
    image twice `size` or more is reduced at once (the model resizes to `size` anyway):
    `janus_batch.images.open_bounded`."""
    try:
        return open_bounded(data, max_pixels=max_pixels, size=size)
    except UnidentifiedImageError:
        raise ValueError(f"cannot read image {uri}: cannot identify image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {uri}: {exc}") from None


def _from_storage(uri: str) -> bool:
    return uri.startswith(("s3://", "storage:"))


class CaptionHandler(Handler):
    """The caption-specific steps of a chunk."""

    kind = JobKind.CAPTION

    def prepare(
        self, ctx: Context, job: Job, items: list[Claimed]
    ) -> tuple[list[Work], list[Outcome]]:
        from janus import CaptionRequest

        settings = ctx.settings
        with metrics.FETCH_SECONDS.time():
            fetched = _fetch(ctx, items)
        size = int(getattr(ctx.pipeline().engine(), "image_size", 384))
        params: dict[str, Any] = {**DEFAULTS, **(job.params or {})}
        work: list[Work] = []
        errors: list[Outcome] = []
        breaker = ctx.pipeline().breaker
        for item, data in zip(items, fetched, strict=True):
            uri = item.input["uri"]
            if isinstance(data, FetchError):
                errors.append(self._fetch_failed(ctx, item, data))
                continue
            if _from_storage(uri):
                breaker.success()
            try:
                image = open_image(
                    data,
                    item.input.get("image") or uri,
                    size,
                    max_pixels=settings.max_image_pixels,
                )
                requests = tuple(
                    CaptionRequest(
                        image=image,
                        question=question,
                        max_new_tokens=int(params["max_new_tokens"]),
                        temperature=float(params["temperature"]),
                        top_p=float(params["top_p"]),
                        seed=int(item.input["seed"]),
                    )
                    for question in _questions(item.input).values()
                )
            except ValueError as exc:  # JanusRequestError is a ValueError too
                errors.append(failed(item, str(exc)))
                continue
            work.append(Work(item, requests if "prompts" in item.input else requests[0]))
        return work, errors

    def _fetch_failed(self, ctx: Context, item: Claimed, error: FetchError) -> Outcome:
        """A permanent error fails the item; a transient one defers it, and one of storage
        also pauses the worker's new work until a single fetch of that input answers."""
        if error.permanent:
            return failed(item, str(error))
        if error.storage:
            settings = ctx.settings
            uri = item.input["uri"]
            ctx.pipeline().breaker.trip(
                str(error),
                probe=lambda: fetch_uri(
                    uri,
                    byte_range=_range(item.input) or _first_byte(item.input),
                    storage=ctx.storage,
                    endpoint_url=settings.s3_endpoint_url,
                    region=settings.s3_region,
                    max_retries=0,
                    egress=EgressPolicy.from_settings(settings),
                ),
            )
        return deferred(ctx, self.kind, item, str(error), storage=error.storage)

    def finish(self, ctx: Context, job: Job, work: Work, ticket: Ticket) -> Outcome:
        if "prompts" in work.item.input:
            names = list(_questions(work.item.input))
            captions = dict(zip(names, ticket.outputs, strict=True))
            return Outcome(work.item, ItemStatus.SUCCEEDED, result={"captions": captions})
        [text] = ticket.outputs
        return Outcome(work.item, ItemStatus.SUCCEEDED, result={"caption": text})


def _fetch(ctx: Context, items: list[Claimed]) -> list[bytes | FetchError]:
    """The bytes of each item's image, in order: parquet cells (`parquet` in the input) from
    their row groups, the rest by URI (ranges of shards included), concurrently."""
    settings = ctx.settings
    cells = [i for i, item in enumerate(items) if item.input.get("parquet")]
    others = [i for i, item in enumerate(items) if not item.input.get("parquet")]
    out: list[bytes | FetchError] = [b""] * len(items)
    fetched = fetch_many(
        [items[i].input["uri"] for i in others],
        ranges=[_range(items[i].input) for i in others],
        concurrency=settings.fetch_concurrency,
        storage=ctx.storage,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        max_retries=settings.max_retries,
        egress=EgressPolicy.from_settings(settings),
    )
    for i, data in zip(others, fetched, strict=True):
        out[i] = data
    if cells:
        from worker import parquet  # pyarrow: only for jobs that read parquet

        opener = Opener(settings, ctx.storage)
        refs = []
        for i in cells:
            value = items[i].input
            group, index, column = value["parquet"]
            data_file = DataFile(value["file"], value["uri"])
            refs.append((data_file, int(group), int(index), str(column), value["image"]))
        try:
            read = parquet.read_cells(opener, refs, MAX_BYTES, settings.max_row_group_bytes)
        finally:
            opener.close()
        for i, data in zip(cells, read, strict=True):
            out[i] = data
    return out


def _first_byte(value: dict[str, Any]) -> tuple[int, int] | None:
    """What a storage probe reads of a parquet file (not all of it): its first byte."""
    return (0, 1) if value.get("parquet") else None


def _questions(value: dict[str, Any]) -> dict[str, str]:
    """The prompts of an item input by name (one, named "", for an item with one prompt)."""
    prompts = value.get("prompts")
    return dict(prompts) if prompts else {"": value["prompt"]}


def _range(value: dict[str, Any]) -> tuple[int, int] | None:
    """(offset, size) of an input read from inside a larger object (a shard member)."""
    span = value.get("range")
    return (int(span[0]), int(span[1])) if span else None
