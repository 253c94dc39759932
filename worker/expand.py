"""Expanding a job's source into items, streamed: an S3 prefix, a JSONL manifest, or a
dataset (CSV files, WebDataset shards: `worker.dataset_items`).

`{"s3_prefix": "s3://bucket/prefix/"}` captions every image under the prefix (by extension,
case-insensitive); `{"manifest": uri}` reads one item per line from `s3://`, `http(s)://` or
`storage:<key>` (an uploaded manifest). Keys are listed a page at a time and lines read a
chunk at a time, and `add_items` inserts and enqueues page by page, so workers start before
the listing ends and memory stays flat whatever the size.

A caption manifest line may name an uploaded image by file id (`{"image": "file_..."}`, as
the CLI does for folders over the inline limit): ids are resolved to `storage:<key>` among
the job owner's files, one query per page of lines. A malformed line, a line over
JANUS_BATCH_MAX_MANIFEST_LINE_BYTES (never held whole), or an unknown or
foreign file id, becomes a failed item (`manifest line 7: invalid JSON (...)`), not a failed
job; it keeps the line's custom_id when the line gives a valid one. A line
`{"custom_id": ..., "error": ...}` is an input the client could not send (an empty file of an
uploaded folder): a failed item too (`janus_batch.inputs.not_sent_item`). A line naming an
`s3://` object inside the service's own storage fails alone too (it would read other users'
data; uploads are named by file id). A source inside that storage,
or one that cannot be read, fails the job with a readable error; a transient
error (after retries) raises, and the sweeper sends expand again later; any other error (one
that a resume would meet again) ends the expansion with it as the job's error. Redelivery resumes:
after the last listed key (S3) or the lines already turned into items (manifest). A job
cancelled (or expired: its completion window ended) before or while its source is expanded
is closed here: marked expanded, its pending items cancelled (or expired), and handed to
finalization.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

from janus_batch import datasets, lifecycle
from janus_batch.constants import FINALIZE_JOB_TASK
from janus_batch.db import session_scope
from janus_batch.egress import EgressPolicy
from janus_batch.files import file_resolver, referenced_file_ids
from janus_batch.inputs import (
    InvalidInput,
    caption_item,
    custom_id_of,
    generate_item,
    parse_json_line,
    parse_params,
    shown_text,
)
from janus_batch.items import INSERT_PAGE, NewItem, add_items, window_for
from janus_batch.models import Item, Job
from janus_batch.queue import send_control
from janus_batch.states import JOB_STOPPING, JobKind, JobStatus
from janus_batch.storage import StorageError, TransientStorageError
from worker import sources
from worker.context import Context
from worker.dataset_items import dataset_items

log = logging.getLogger(__name__)

EXPANDABLE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
CHECK_EVERY = 1000
"""Manifest lines between two checks of the job (cancelled?) and heartbeats (updated_at)."""
RAW_CHARS = 500
RESOLVE_PAGE = 1000
"""Manifest lines parsed together, so the file ids they name are looked up in one query."""


class Cancelled(Exception):
    """The job was cancelled (or expired) while its source was being expanded."""


def expand_source(ctx: Context, job_id: str) -> int:
    """Turn the job's source into items; returns how many this call added."""
    with session_scope(ctx.database_url) as session:
        job = session.get(Job, job_id)
        done = session.scalar(select(func.count()).where(Item.job_id == job_id)) or 0
        last_input = session.scalar(
            select(Item.input).where(Item.job_id == job_id).order_by(Item.idx.desc()).limit(1)
        )
    if job is not None and job.status in JOB_STOPPING and not job.expanded:
        log.info("job=%s %s before its expansion: handed to finalization", job_id, job.status)
        _finish(ctx, job_id, None)
        return 0
    if job is None or (reason := _skip_reason(job)):
        log.info("job=%s expand skipped: %s", job_id, "no such job" if job is None else reason)
        return 0
    source = job.source or {}
    where = source.get("s3_prefix") or source.get("manifest") or _dataset_name(source)
    log.info("job=%s expanding %s (resuming after %d items)", job_id, where, done)
    try:
        items = _items(ctx, job, source, done, last_input)
        added = add_items(
            ctx.database_url,
            ctx.app,
            job_id,
            job.kind,
            items,
            chunk_size=ctx.settings.chunk_size,
            window=window_for(ctx.settings, job.kind, job.model),
            start_idx=done,
            page_size=INSERT_PAGE,
        )
    except Cancelled:
        log.info("job=%s expansion stopped: the job is being cancelled or expired", job_id)
        _finish(ctx, job_id, None)
        return 0
    except (TransientStorageError, sources.TransientSourceError, OperationalError, InterfaceError):
        log.warning("job=%s expansion interrupted; the sweeper will resume it", job_id)
        raise
    except IntegrityError:  # a concurrent expansion (a redelivery) inserted these idx first
        log.warning("job=%s expanded concurrently: this run stops, the other goes on", job_id)
        raise
    except (StorageError, sources.SourceError, InvalidInput) as exc:
        log.warning("job=%s cannot expand %s: %s", job_id, where, exc)
        _finish(ctx, job_id, str(exc))
        return 0
    except Exception as exc:  # would fail again at the same place on every resume
        error = f"cannot expand {where}: {type(exc).__name__}: {shown_text(str(exc))[:1000]}"
        log.exception("job=%s %s", job_id, error)
        _finish(ctx, job_id, error)
        return 0
    _finish(ctx, job_id, None, empty_error=_empty_error(source))
    log.info("job=%s expansion done: %d items added", job_id, added)
    return added


def _skip_reason(job: Job) -> str | None:
    if job.expanded:
        return "already expanded"
    if job.status not in EXPANDABLE:
        return f"job is {job.status}"
    return None


def _empty_error(source: dict[str, Any]) -> str:
    """The job's error when its source turned out to hold no items (never None: a job that
    ends without items and without an error was cancelled, see `worker.finalize`)."""
    if "s3_prefix" in source:
        return f"no images found under {source['s3_prefix']}"
    if "manifest" in source:
        return f"manifest {source['manifest']} has no items"
    if fmt := datasets.source_format(source):
        return f"{_dataset_name(source)} holds no {'samples' if fmt == 'webdataset' else 'rows'}"
    return "the job has no source to expand"


def _dataset_name(source: dict[str, Any]) -> str:
    """A dataset source as a message names it: `csv source s3://b/a.csv (+2 more)`."""
    fmt = datasets.source_format(source)
    if fmt is None:
        return "no source"
    refs = [source[fmt]] if isinstance(source[fmt], str) else source[fmt]
    more = f" (+{len(refs) - 1} more)" if len(refs) > 1 else ""
    return f"{fmt} source {refs[0]}{more}"


def _items(
    ctx: Context, job: Job, source: dict[str, Any], done: int, last_input: dict | None
) -> Iterator[NewItem]:
    settings = ctx.settings
    params = parse_params(
        job.kind, job.params, max_n=settings.max_n, default_max_new_tokens=settings.max_new_tokens
    )
    guard = _guard(ctx, job.id)
    if "s3_prefix" in source:
        if job.kind != JobKind.CAPTION:
            raise sources.SourceError("an s3_prefix source needs a caption job")
        start_after = sources.key_of(last_input["image"]) if last_input else None
        uris = sources.list_images(settings, source["s3_prefix"], start_after, on_page=guard)
        return (_prefix_item(uri, params, settings) for uri in uris)
    if "manifest" in source:
        lines = sources.read_lines(settings, ctx.storage, source["manifest"])
        return _manifest_items(ctx, job, params, lines, skip=done, guard=guard)
    if datasets.source_format(source):
        return dataset_items(ctx, job, params, last_input, guard)
    return iter(())


def _prefix_item(uri: str, params: Any, settings: Any) -> NewItem:
    try:
        return caption_item(
            {"image": uri},
            params,
            where=uri,
            max_prompt_chars=settings.max_prompt_chars,
            storage_url=settings.resolved_storage_url(),
        )
    except InvalidInput as exc:  # an odd key fails alone; input keeps the key for resuming
        return NewItem(input={"image": uri}, error=str(exc))


def _manifest_items(
    ctx: Context,
    job: Job,
    params: Any,
    lines: Iterator[bytes | sources.LongLine],
    *,
    skip: int,
    guard: Callable[[], None],
) -> Iterator[NewItem]:
    """One item per non-blank line (a bad line gives a failed item), skipping the first `skip`;
    lines are parsed a page at a time so the page's file ids take one query."""
    seen = 0
    page: list[tuple[int, bytes | sources.LongLine]] = []
    for lineno, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes) and not raw.strip():
            continue
        seen += 1
        if seen <= skip:
            continue
        if seen % CHECK_EVERY == 0:
            guard()
        page.append((lineno, raw))
        if len(page) >= RESOLVE_PAGE:
            yield from _manifest_page(ctx, job, params, page)
            page = []
    if page:
        yield from _manifest_page(ctx, job, params, page)


class _BadLine:
    """A manifest line that is not JSON (or too long to read), with the reason."""

    def __init__(self, message: str) -> None:
        self.message = message


def _parse_line(raw: bytes | sources.LongLine, max_bytes: int) -> Any:
    if isinstance(raw, sources.LongLine):  # never parsed: only its start was kept
        return _BadLine(
            f"is {raw.length:,} bytes long; the limit is {max_bytes:,} "
            "(JANUS_BATCH_MAX_MANIFEST_LINE_BYTES)"
        )
    value, error = parse_json_line(raw)
    return _BadLine(error) if error is not None else value


def _manifest_page(
    ctx: Context, job: Job, params: Any, page: list[tuple[int, bytes | sources.LongLine]]
) -> Iterator[NewItem]:
    """The items of a page of manifest lines, file ids resolved among the owner's files."""
    values = [_parse_line(raw, ctx.settings.max_manifest_line_bytes) for _, raw in page]
    resolve_file = None
    if job.kind == JobKind.CAPTION:
        ids = referenced_file_ids([v for v in values if not isinstance(v, _BadLine)], "image")
        resolve_file = file_resolver(ctx.database_url, job.owner, ids, "image")
    for (lineno, raw), value in zip(page, values, strict=True):
        yield _manifest_item(job.kind, params, lineno, raw, value, ctx.settings, resolve_file)


def _manifest_item(
    kind: str,
    params: Any,
    lineno: int,
    raw: bytes | sources.LongLine,
    value: Any,
    settings: Any,
    resolve_file: Callable[[str, str], str] | None,
) -> NewItem:
    where = f"manifest line {lineno}"
    try:
        if isinstance(value, _BadLine):
            raise InvalidInput(where, value.message)
        if kind == JobKind.CAPTION:
            return caption_item(
                value,
                params,
                where=where,
                max_prompt_chars=settings.max_prompt_chars,
                resolve_file=resolve_file,
                storage_url=settings.resolved_storage_url(),
                egress=EgressPolicy.from_settings(settings),
            )
        return generate_item(
            value,
            params,
            where=where,
            max_prompt_chars=settings.max_prompt_chars,
            max_n=settings.max_n,
        )
    except InvalidInput as exc:
        head = raw.head if isinstance(raw, sources.LongLine) else raw
        text = head.decode("utf-8", errors="replace")
        return NewItem(
            input={"line": lineno, "raw": text.strip()[:RAW_CHARS]},
            custom_id=custom_id_of(value),
            error=str(exc),
        )


def _guard(ctx: Context, job_id: str) -> Callable[[], None]:
    """A check run between pages: stop if the job is being stopped, else touch updated_at
    (so the sweeper sees the expansion is alive)."""

    def check() -> None:
        with session_scope(ctx.database_url) as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            if status not in EXPANDABLE:
                raise Cancelled
            lifecycle.touch(session, job_id)

    return check


def _finish(ctx: Context, job_id: str, error: str | None, empty_error: str | None = None) -> None:
    """Mark the job expanded (recording an error, if any) and try the move to finalizing.

    Items of a stopping job still pending (inserted after the cancel or the deadline) end
    as the stop says first (cancelled or expired).
    """
    with session_scope(ctx.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        if error is None and empty_error and job.total == 0:
            error = empty_error
        lifecycle.end_expansion(session, job_id, error)
        lifecycle.stop_pending(session, job_id)
        won = lifecycle.start_finalizing(session, job_id)
    if won:
        log.info("job=%s nothing left to do: finalize enqueued", job_id)
        send_control(ctx.app, FINALIZE_JOB_TASK, job_id)
