"""What the dashboard's templates show, built from rows: job views, gallery cards, caption and
error rows, and page links."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Request

from api.schemas import JobPublic
from api.ui.format import input_summary
from api.views import job_public
from janus_batch import jobs
from janus_batch.models import Item, Job
from janus_batch.storage import Storage

RESULTS_TABLE = "results.parquet"


@dataclass(frozen=True)
class Card:
    """One generated image in the gallery."""

    idx: int
    custom_id: str | None
    prompt: str
    seed: Any
    index: int
    count: int
    thumb_url: str
    full_url: str


@dataclass(frozen=True)
class CaptionRow:
    """One captioned image."""

    idx: int
    custom_id: str | None
    image: str
    caption: str
    thumb_url: str
    full_url: str


@dataclass(frozen=True)
class ErrorRow:
    """One failed item."""

    idx: int
    custom_id: str | None
    status: str
    input: str
    error: str


def root(request: Request) -> str:
    """The app's mount point (empty unless served under a path prefix)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def views(request: Request, db: str, storage: Storage, rows: list[Job]) -> list[JobPublic]:
    """The API view of each job (counts, rate, ETA), with one COUNT of running items."""
    running = jobs.running_counts(db, [job.id for job in rows])
    return [job_public(job, running.get(job.id, 0), storage, request) for job in rows]


DROPPED = ("key", "login_error")
"""Query parameters never carried into a link."""


def with_params(request: Request, path: str | None = None, /, **changes: Any) -> str:
    """This page's URL (or `path` under the app's root) with query parameters replaced
    (None removes one)."""
    params = {
        k: v for k, v in request.query_params.items() if k not in changes and k not in DROPPED
    }
    params.update({k: v for k, v in changes.items() if v is not None})
    query = urlencode(params)
    target = root(request) + (path or request.url.path)
    return f"{target}?{query}" if query else target


def _relative(job: Job, key: str) -> str:
    prefix = f"{job.output_prefix}/"
    return quote(key.removeprefix(prefix), safe="/")


def gallery(base: str, job: Job, items: list[Item], size: int = 256) -> list[Card]:
    """A card per generated image of the items, in item then image order; an image inside a
    WebDataset shard is shown by its member alone (`/ui/shard-images/...`)."""
    cards = []
    for item in items:
        prompt = str((item.input or {}).get("prompt", ""))
        images = (item.result or {}).get("images") or []
        for image in images:
            if image.get("member"):
                full = f"{base}/ui/shard-images/{job.id}/{item.idx}/{int(image.get('index', 0))}"
                thumb = f"{full}?size={size}"
            else:
                rel = _relative(job, str(image.get("key", "")))
                thumb = f"{base}/ui/thumbs/{job.id}/{rel}?size={size}"
                full = f"{base}/v1/jobs/{job.id}/files/{rel}"
            cards.append(
                Card(
                    idx=item.idx,
                    custom_id=item.custom_id,
                    prompt=prompt,
                    seed=image.get("seed"),
                    index=int(image.get("index", 0)),
                    count=len(images),
                    thumb_url=thumb,
                    full_url=full,
                )
            )
    return cards


def caption_rows(base: str, job: Job, items: list[Item], size: int = 128) -> list[CaptionRow]:
    """A row per captioned item, with its input thumbnail and a larger preview link."""
    return [
        CaptionRow(
            idx=item.idx,
            custom_id=item.custom_id,
            image=input_summary("caption", item.input),
            caption=str((item.result or {}).get("caption", "")),
            thumb_url=f"{base}/ui/inputs/{job.id}/{item.idx}?size={size}",
            full_url=f"{base}/ui/inputs/{job.id}/{item.idx}?size=512",
        )
        for item in items
    ]


def error_rows(job: Job, items: list[Item]) -> list[ErrorRow]:
    """A row per failed or expired item."""
    return [
        ErrorRow(
            idx=item.idx,
            custom_id=item.custom_id,
            status=str(item.status),
            input=input_summary(job.kind, item.input),
            error=item.error or "",
        )
        for item in items
    ]


@dataclass(frozen=True)
class Pager:
    """Links of a cursor-paginated table: the first page, and the next if there is one."""

    first_url: str | None
    next_url: str | None


def item_pager(request: Request, param: str, items: list[Item], has_more: bool) -> Pager:
    """Pages of an item table whose cursor (the last idx shown) is the query parameter `param`."""
    anchor = "#errors" if param == "errors_after" else "#results"
    first = (
        with_params(request, **{param: None}) + anchor if request.query_params.get(param) else None
    )
    nxt = with_params(request, **{param: items[-1].idx}) + anchor if has_more and items else None
    return Pager(first, nxt)


@dataclass(frozen=True)
class FileLink:
    """One output file of a job, and where to download it."""

    name: str
    url: str


@dataclass(frozen=True)
class FileList:
    """The first output files under one folder of the job, and how many more there are."""

    title: str
    folder: str
    links: list[FileLink]
    more: bool


LISTED_FILES = 20
"""Files listed per folder (sidecars, shards) on a job page; the rest are named by a count."""


def output_files(base: str, job: Job, storage: Storage) -> tuple[FileLink | None, list[FileList]]:
    """What the job page links besides the manifests: results.parquet once it is written,
    and the first WebDataset sidecars and output shards stored (each link through the API's
    files route, which streams or serves them)."""
    prefix = f"{job.output_prefix}/"
    url = f"{base}/v1/jobs/{job.id}/files/"
    parquet = None
    if storage.exists(prefix + RESULTS_TABLE):
        parquet = FileLink(RESULTS_TABLE, url + RESULTS_TABLE)
    lists = []
    for folder, title in (("sidecars/", "WebDataset sidecars"), ("shards/", "Output shards")):
        keys = list(islice(storage.iter_keys(prefix + folder), LISTED_FILES + 1))
        if keys:
            links = [
                FileLink(key.removeprefix(prefix), url + _relative(job, key))
                for key in keys[:LISTED_FILES]
            ]
            lists.append(FileList(title, folder, links, len(keys) > LISTED_FILES))
    return parquet, lists
