"""Generating a chunk: build requests from the self-contained item inputs; the engine thread
renders them in passes shared with other chunks; each item's images are encoded and uploaded
in the outtake pool.

Image k of item idx goes to `<output_prefix>/images/<idx:08d>_<k>.<ext>`: the same item
always writes the same keys, so a retry overwrites and never duplicates. Storage down does not
fail an item: its encoded images wait in memory while the breaker probes storage, up to
`JANUS_BATCH_STORAGE_PATIENCE` seconds, then the item is deferred. Result of an item:
`{"images": [{"key", "uri", "seed", "index"}], "format": ext}`.

A job with `params.output.format = "webdataset"` writes the chunk's images into one shard
instead (`worker.shards`; each entry then names the shard as `key`, plus `member` and
`range`): the chunk holds its items' outcomes until `ShardSink.commit` has stored the shard,
with the same storage patience.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from janus_batch import shards
from janus_batch.lifecycle import Claimed, Outcome
from janus_batch.models import Job
from janus_batch.states import ItemStatus, JobKind
from worker import metrics
from worker.breaker import StorageBreaker
from worker.chunk import Handler, Work, deferred, failed, stopped
from worker.context import Context
from worker.encode import EncodeSpec, encode_image, image_format
from worker.fetch import is_transient, retry_transient
from worker.scheduler import Ticket
from worker.shards import ShardBroken, ShardWriter

log = logging.getLogger(__name__)

REQUEST_FIELDS = ("prompt", "n", "seed", "cfg_weight", "temperature", "top_k", "top_p")


def image_key(output_prefix: str, idx: int, k: int, ext: str) -> str:
    """The storage key of image `k` of item `idx`."""
    return f"{output_prefix.rstrip('/')}/images/{idx:08d}_{k}.{ext}"


class GenerateHandler(Handler):
    """The generate-specific steps of a chunk."""

    kind = JobKind.GENERATE

    def prepare(
        self, ctx: Context, job: Job, items: list[Claimed]
    ) -> tuple[list[Work], list[Outcome]]:
        from janus import GenerateRequest

        work: list[Work] = []
        errors: list[Outcome] = []
        sink = None
        if items and shards.images_per_shard(job.params) is not None:
            sink = ShardSink(ctx, job, ShardWriter(job, items[0]))
        for item in items:
            fields = {k: item.input[k] for k in REQUEST_FIELDS if item.input.get(k) is not None}
            try:
                work.append(Work(item, GenerateRequest(**fields), sink))
            except (TypeError, ValueError) as exc:
                errors.append(failed(item, f"invalid request: {exc}"))
        if sink is not None and not work:
            sink.discard()
        return work, errors

    def finish(self, ctx: Context, job: Job, work: Work, ticket: Ticket) -> Outcome:
        """Encode and upload the item's images (in the outtake pool); the item fails if one
        cannot be stored."""
        fmt = image_format((job.params or {}).get("format"))
        entries = []
        sink = work.sink if isinstance(work.sink, ShardSink) else None
        for unit, image in zip(ticket.units, ticket.outputs, strict=True):
            try:
                if sink is not None:
                    entry = sink.add(fmt, work, unit.k, unit.seed, image)
                else:
                    entry = _store(ctx, job, fmt, work, unit.k, unit.seed, image, ticket.keep)
            except StorageDown as exc:
                return deferred(ctx, self.kind, work.item, str(exc), storage=True)
            except Unwanted:  # stopped (or its lease lost) while storage was down
                return stopped(ctx, job, work.item)
            if isinstance(entry, str):
                return failed(work.item, entry)
            entries.append(entry)
        result = {"images": sorted(entries, key=lambda e: e["index"]), "format": fmt.ext}
        return Outcome(work.item, ItemStatus.SUCCEEDED, result=result)


def _metadata(job: Job, w: Work, index: int, seed: int) -> dict[str, Any]:
    """What an image says of how it was made (in the file, and a shard's json member)."""
    request = w.request
    return {
        "prompt": request.prompt,
        "seed": seed,
        "index": index,
        "cfg_weight": request.cfg_weight,
        "temperature": request.temperature,
        "top_k": request.top_k,
        "top_p": request.top_p,
        "model": job.model,  # the public name the job named (never a conversion cache's path)
        "job_id": job.id,
        "item_idx": w.item.idx,
    }


def _store(
    ctx: Context,
    job: Job,
    fmt: EncodeSpec,
    w: Work,
    index: int,
    seed: int,
    image: Any,
    wanted: Callable[[], bool],
) -> dict[str, Any] | str:
    """Encode and upload one image; its result entry, or an error message."""
    key = image_key(job.output_prefix, w.item.idx, index, fmt.ext)
    metadata = _metadata(job, w, index, seed)
    try:
        with metrics.UPLOAD_SECONDS.time():
            data = encode_image(
                image, fmt, metadata, png_compress_level=ctx.settings.png_compress_level
            )
            _upload(
                ctx,
                lambda: ctx.storage.put_bytes(key, data, fmt.content_type),
                f"cannot store {key}",
                wanted,
            )
    except (StorageDown, Unwanted):
        raise
    except Exception as exc:  # one image fails its item, not the batch
        log.warning("job=%s idx=%d cannot store %s: %s", job.id, w.item.idx, key, exc)
        return f"cannot store image {index} at {key}: {exc}"
    return {"key": key, "uri": ctx.storage.uri(key), "seed": seed, "index": index}


class StorageDown(Exception):
    """Storage stayed down longer than `storage_patience`: the item is deferred."""


class Unwanted(Exception):
    """The item's job is being stopped (or its lease was taken back) while it waited."""


PROBE_KEY = "_janus/probe"
"""A tiny object the breaker writes to tell that storage takes writes again (a read could
answer while writes still fail: SlowDown on PUT only, a cluster without write quorum)."""
WAIT_STEP = 1.0


def _upload(ctx: Context, put: Callable[[], None], what: str, wanted: Callable[[], bool]) -> None:
    """Run `put` (one write to storage). A transient error that outlasts the quick retries
    opens the breaker (probed by a write) and the encoded image (or shard) waits, in this
    thread, until storage answers; once storage has been down `storage_patience` seconds
    (counted from the outage's start, not this upload's), StorageDown. Unwanted if the item
    is no longer wanted meanwhile; a permanent error raises."""
    breaker = ctx.pipeline().breaker
    settings = ctx.settings
    storage = ctx.storage
    while True:
        try:
            retry_transient(put, attempts=settings.max_retries + 1)
        except Exception as exc:
            if not is_transient(exc):
                raise
            breaker.trip(str(exc), probe=lambda: storage.put_bytes(PROBE_KEY, b"", "text/plain"))
            _wait_for_storage(breaker, settings.storage_patience, wanted, what)
            continue
        breaker.success()
        return


def _wait_for_storage(
    breaker: StorageBreaker, patience: float, wanted: Callable[[], bool], what: str
) -> None:
    """Wait until the breaker closes; StorageDown once it has been open `patience` seconds,
    Unwanted as soon as the item is not wanted any more."""
    while True:
        opened = breaker.opened
        if opened is None:
            return
        deadline = opened + patience
        if time.monotonic() >= deadline:
            raise StorageDown(f"{what}: storage unreachable for over {patience:.0f} s")
        if not wanted():
            raise Unwanted(what)
        if breaker.wait_until_usable(min(deadline, time.monotonic() + WAIT_STEP)):
            return


@dataclass
class ShardSink:
    """A chunk's images go into one WebDataset shard (`worker.shards.ShardWriter`); the
    chunk holds its items' outcomes until `commit` has stored it (`worker.chunk`)."""

    ctx: Context
    job: Job
    writer: ShardWriter

    def add(
        self, fmt: EncodeSpec, w: Work, index: int, seed: int, image: Any
    ) -> dict[str, Any] | str:
        """Encode one image into the shard; its result entry, or an error message."""
        metadata = _metadata(self.job, w, index, seed)
        try:
            with metrics.UPLOAD_SECONDS.time():
                data = encode_image(
                    image, fmt, metadata, png_compress_level=self.ctx.settings.png_compress_level
                )
                member, where = self.writer.add_image(
                    w.item.idx,
                    index,
                    fmt.ext,
                    data,
                    {**metadata, "custom_id": w.item.custom_id, "params": self.job.params},
                )
        except ShardBroken as exc:  # the spool disk, not the item: it goes again
            raise StorageDown(str(exc)) from exc
        except Exception as exc:  # one image fails its item, not the chunk
            log.warning(
                "job=%s idx=%d cannot add image %d to its shard: %s",
                self.job.id,
                w.item.idx,
                index,
                exc,
            )
            return f"cannot store image {index} in shard {self.writer.key}: {exc}"
        return {
            "key": self.writer.key,
            "member": member,
            "range": where,
            "uri": self.ctx.storage.uri(self.writer.key),
            "seed": seed,
            "index": index,
        }

    def commit(self, held: list[Outcome]) -> list[Outcome]:
        """Upload the shard (waiting out a storage outage like an image upload) and return
        the outcomes to record: the held ones once it is stored; else deferred (storage
        down past its patience), cancelled (the job is being cancelled meanwhile) or failed
        (a permanent error). Nothing is uploaded when no outcome is held."""
        self.writer.close()
        if not held:
            return []
        key, ctx = self.writer.key, self.ctx
        if self.writer.broken is not None:  # a corrupt archive is never uploaded
            why = f"shard {key} not stored, its spool file is broken: {self.writer.broken}"
            return [deferred(ctx, JobKind.GENERATE, o.item, why, storage=True) for o in held]
        watch = ctx.pipeline().watch
        try:
            _upload(
                ctx,
                lambda: ctx.storage.put_file(key, self.writer.path, shards.CONTENT_TYPE),
                f"cannot store shard {key}",
                lambda: not watch.stopping(self.job.id),
            )
        except StorageDown as exc:
            return [deferred(ctx, JobKind.GENERATE, o.item, str(exc), storage=True) for o in held]
        except Unwanted:
            return [stopped(ctx, self.job, o.item) for o in held]
        except Exception as exc:  # a permanent error fails the shard's items, not the worker
            log.warning("job=%s cannot store shard %s: %s", self.job.id, key, exc)
            return [failed(o.item, f"cannot store shard {key}: {exc}") for o in held]
        log.info(
            "job=%s stored shard %s: %d members of %d items",
            self.job.id,
            key,
            self.writer.members,
            len(held),
        )
        return held

    def discard(self) -> None:
        self.writer.discard()
