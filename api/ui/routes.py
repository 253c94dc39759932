"""The dashboard at /ui: server-rendered pages, partials the pages poll, login, static files.

Pages work without JavaScript; `ui.js` re-fetches the partials every 2 s for live progress
and posts the cancel request to the JSON API.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from api.deps import DatabaseUrl, Owner, SettingsDep, StorageDep
from api.errors import HttpError
from api.ui import auth, pages, thumbs
from api.ui.format import FILTERS, TESTS
from api.views import live_view
from janus_batch import jobs
from janus_batch.inputs import InvalidInput
from janus_batch.keys import verify_key
from janus_batch.states import ItemStatus, JobKind, JobStatus
from janus_batch.storage import Storage

HERE = FilePath(__file__).parent
STATIC = {p.name: p for p in (HERE / "static").iterdir() if p.is_file()}
ASSET_VERSION = "5"

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(FILTERS)
templates.env.tests.update(TESTS)

router = APIRouter(include_in_schema=False)
router.include_router(thumbs.router)

JobId = Annotated[str, Path(max_length=64)]
Cursor = Annotated[str | None, Query(max_length=512)]
ItemCursor = Annotated[int | None, Query(ge=-1, le=2**31 - 1)]
LIST_LIMIT = 25
GALLERY_ITEMS = 24
CAPTION_ITEMS = 50
ERROR_ITEMS = 20


def _render(
    request: Request, name: str, settings: Any, status_code: int = 200, /, **context: Any
) -> Response:
    base = pages.root(request)
    context.update(
        root=base,
        static=lambda file: f"{base}/ui/static/{file}?v={ASSET_VERSION}",
        flower_url=settings.flower_url,
        keys_mode=settings.auth_mode == "keys",
    )
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _login(request: Request, settings: Any) -> Response:
    error = "That key is invalid or revoked." if request.query_params.get("login_error") else None
    return _render(
        request, "login.html", settings, 401, error=error, next=pages.with_params(request)
    )


def _choice(value: str | None, allowed: type[JobStatus | JobKind]) -> str | None:
    """A filter value, or None for `any` (and for anything unknown)."""
    return value if value in {m.value for m in allowed} else None


def _jobs_page(
    request: Request, db: str, storage: Storage, owner: str, after: str | None
) -> dict[str, Any]:
    status = _choice(request.query_params.get("status"), JobStatus)
    kind = _choice(request.query_params.get("kind"), JobKind)
    try:
        rows, has_more = jobs.list_jobs(
            db, owner, limit=LIST_LIMIT, after=after, status=status, kind=kind
        )
    except InvalidInput:  # a stale or edited cursor: show the first page
        after = None
        rows, has_more = jobs.list_jobs(db, owner, limit=LIST_LIMIT, status=status, kind=kind)
    nxt = jobs.encode_cursor(rows[-1]) if has_more and rows else None
    return {
        "jobs": pages.views(request, db, storage, rows),
        "status": status,
        "kind": kind,
        "statuses": [s.value for s in JobStatus],
        "kinds": [k.value for k in JobKind],
        "first_url": pages.with_params(request, "/ui", after=None) if after else None,
        "next_url": pages.with_params(request, "/ui", after=nxt) if nxt else None,
        "poll_url": pages.with_params(request, "/ui/partials/jobs"),
    }


@router.get("/")
def home(request: Request) -> RedirectResponse:
    """The dashboard is the API's front page."""
    return RedirectResponse(pages.root(request) + "/ui", status_code=307)


@router.get("/ui")
def jobs_page(
    request: Request,
    settings: SettingsDep,
    db: DatabaseUrl,
    storage: StorageDep,
    after: Cursor = None,
) -> Response:
    """Your jobs, newest first, with live progress."""
    if (redirect := auth.key_login(request, settings)) is not None:
        return redirect
    if (owner := auth.page_owner(request, settings)) is None:
        return _login(request, settings)
    context = _jobs_page(request, db, storage, owner, after)
    return _render(request, "jobs.html", settings, **context)


@router.get("/ui/partials/jobs")
def jobs_partial(
    request: Request,
    settings: SettingsDep,
    db: DatabaseUrl,
    owner: Owner,
    storage: StorageDep,
    after: Cursor = None,
) -> Response:
    """The job table alone (what the list page polls)."""
    context = _jobs_page(request, db, storage, owner, after)
    return _render(request, "_jobs_table.html", settings, **context)


@router.get("/ui/jobs/{job_id}")
def job_page(
    job_id: JobId,
    request: Request,
    settings: SettingsDep,
    db: DatabaseUrl,
    storage: StorageDep,
    after: ItemCursor = None,
    errors_after: ItemCursor = None,
) -> Response:
    """One job: progress, times, outputs, its results (gallery or captions) and errors."""
    if (redirect := auth.key_login(request, settings)) is not None:
        return redirect
    if (owner := auth.page_owner(request, settings)) is None:
        return _login(request, settings)
    try:
        job = jobs.get_job(db, owner, job_id)
    except jobs.JobNotFound:
        message = f"There is no job {job_id!r} here (it may belong to another API key)."
        return _render(request, "error.html", settings, 404, title="Job not found", message=message)
    base = pages.root(request)
    parquet, file_lists = pages.output_files(base, job, storage)
    limit = GALLERY_ITEMS if job.kind == JobKind.GENERATE else CAPTION_ITEMS
    done, more = jobs.list_items(
        db, owner, job_id, after=after, limit=limit, status=ItemStatus.SUCCEEDED
    )
    failed, more_failed = jobs.list_items(
        db,
        owner,
        job_id,
        after=errors_after,
        limit=ERROR_ITEMS,
        status=(ItemStatus.FAILED, ItemStatus.EXPIRED),
    )
    context = {
        "job": live_view(job, db, storage, request),
        "cards": pages.gallery(base, job, done) if job.kind == JobKind.GENERATE else [],
        "captions": pages.caption_rows(base, job, done) if job.kind == JobKind.CAPTION else [],
        "results_pager": pages.item_pager(request, "after", done, more),
        "errors": pages.error_rows(job, failed),
        "errors_pager": pages.item_pager(request, "errors_after", failed, more_failed),
        "poll_url": f"{base}/ui/partials/jobs/{job.id}",
        "parquet": parquet,
        "file_lists": file_lists,
    }
    return _render(request, "job.html", settings, **context)


@router.get("/ui/partials/jobs/{job_id}")
def job_partial(
    job_id: JobId,
    request: Request,
    settings: SettingsDep,
    db: DatabaseUrl,
    owner: Owner,
    storage: StorageDep,
) -> Response:
    """A job's summary alone (what the job page polls)."""
    job = live_view(jobs.get_job(db, owner, job_id), db, storage, request)
    return _render(request, "_job_summary.html", settings, job=job)


@router.post("/ui/login")
def login(
    request: Request,
    settings: SettingsDep,
    db: DatabaseUrl,
    key: Annotated[str, Form(max_length=512)],
    next: Annotated[str, Form()] = "",
) -> Response:
    """Check a key from the login form and keep it in the dashboard cookie."""
    target = auth.safe_next(next, pages.root(request))
    if settings.auth_mode == "keys" and verify_key(db, key.strip()) is None:
        sep = "&" if "?" in target else "?"
        return RedirectResponse(f"{target}{sep}login_error=1", status_code=303)
    response = RedirectResponse(target, status_code=303)
    if settings.auth_mode == "keys":
        auth.set_key_cookie(response, request, key.strip())
    return response


@router.post("/ui/logout")
def logout(request: Request) -> Response:
    """Forget the dashboard's key."""
    response = RedirectResponse(pages.root(request) + "/ui", status_code=303)
    auth.clear_key_cookie(response)
    return response


@router.get("/ui/static/{name}")
def static_file(name: str) -> Response:
    """The dashboard's stylesheet, script and placeholder image."""
    path = STATIC.get(name)
    if path is None:
        raise HttpError(404, f"no static file {name!r}")
    return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})
