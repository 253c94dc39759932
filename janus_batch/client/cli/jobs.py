"""`janus-batch status | list | cancel | retry | watch | webhook-secret`: reading and
steering jobs."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from janus_batch.client.cli.common import (
    DEFAULT_API_URL,
    ApiKey,
    ApiUrl,
    err,
    handle_errors,
    make_client,
    out,
    with_exit_codes,
)
from janus_batch.client.cli.submit import Interval, Timeout, Wait
from janus_batch.client.cli.watch import duration, notices, wait_for
from janus_batch.client.http import FINAL_STATUSES

JobId = Annotated[str, typer.Argument(help="A job id (job_...).", show_default=False)]
STATUS_COLORS = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "cancelling": "yellow",
    "expired": "magenta",
    "expiring": "magenta",
    "running": "cyan",
    "finalizing": "cyan",
    "queued": "white",
}
SHOWN_ERRORS = 5


def when(value: str | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """An API timestamp in local time, `2026-11-03 14:05:09`; `-` if unset."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone().strftime(fmt)


MODEL_CHARS = 20
"""Most characters of a model's name `list` shows (`status` shows all of it)."""


def model_name(model: str) -> str:
    """A model's public name as `list` shows it: the last part of a hub id or path
    (`deepseek-community/Janus-Pro-7B` -> `Janus-Pro-7B`), cut to MODEL_CHARS."""
    short = model.rstrip("/").rsplit("/", 1)[-1] or model
    return short if len(short) <= MODEL_CHARS else short[: MODEL_CHARS - 1] + "~"


def colored(status: str) -> str:
    return f"[{STATUS_COLORS.get(status, 'white')}]{status}[/]"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items() if v is not None)


def progress_text(counts: dict) -> str:
    """Items done (succeeded or failed) of the total, `284/300`; with cancelled or expired
    items said apart, `284 done, 16 cancelled of 300` (a cancelled or expired job is not
    "300/300")."""
    done = counts["succeeded"] + counts["failed"]
    apart = [f"{counts[k]} {k}" for k in ("cancelled", "expired") if counts.get(k)]
    if apart:
        return f"{done} done, {', '.join(apart)} of {counts['total']}"
    return f"{done}/{counts['total']}"


def webhook_line(hook: dict[str, Any]) -> str:
    """`https://... : delivered (HTTP 204, 1 attempt)`, or what the last attempt met."""
    state = hook.get("state") or "not sent yet (the job has not ended)"
    details = []
    if hook.get("last_response") is not None:
        details.append(f"HTTP {hook['last_response']}")
    elif hook.get("last_error"):
        details.append(str(hook["last_error"]))
    if hook.get("attempts"):
        n = hook["attempts"]
        details.append(f"{n} attempt{'s' if n != 1 else ''}")
    return f"{hook['url']}: {state}" + (f" ({', '.join(details)})" if details else "")


def items_line(job: dict) -> str:
    """`5 total: 2 succeeded, 1 failed, 0 cancelled, 2 expired, 0 running, 0 pending`."""
    counts = job["counts"]
    expired = f"[magenta]{counts['expired']} expired[/], " if counts.get("expired") else ""
    return (
        f"{counts['total']} total: [green]{counts['succeeded']} succeeded[/], "
        f"[red]{counts['failed']} failed[/], {counts['cancelled']} cancelled, {expired}"
        f"{counts['running']} running, {counts['pending']} pending"
        + ("" if job.get("expanded", True) else " (still reading the source)")
    )


def expires_line(job: dict) -> str:
    """When the job's completion window ends, and its length: `2026-11-23 06:00:00 (24h)`."""
    window = job.get("completion_window")
    return when(job["expires_at"]) + (f" (window {window})" if window else "")


def add_errors(grid: Table, job: dict, errors: list[dict]) -> None:
    """The first failed and expired items, and how many more there are."""
    for i, item in enumerate(errors):
        label = "errors" if i == 0 else ""
        name = item.get("custom_id") or f"#{item['idx']}"
        cls = f" [dim]({item['error_class']})[/]" if item.get("error_class") else ""
        grid.add_row(label, f"[red]{escape(str(name))}[/]{cls}: {escape(item.get('error') or '')}")
    more = job["counts"]["failed"] + job["counts"].get("expired", 0) - len(errors)
    if more > 0:
        grid.add_row("", f"... {more} more (janus-batch results {job['id']} --out DIR --errors)")


def status_panel(job: dict, errors: list[dict]) -> Panel:
    """The `status` view of a job: counts, times, rate, ETA, output, first errors."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("status", colored(job["status"]))
    if job.get("label"):
        grid.add_row("label", escape(job["label"]))
    grid.add_row("items", items_line(job))
    grid.add_row("created", when(job["created_at"]))
    if job.get("expires_at"):
        grid.add_row("expires", expires_line(job))
    grid.add_row("started", when(job.get("started_at")))
    if job.get("finished_at"):
        took = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(
            job["started_at"] or job["created_at"]
        )
        grid.add_row(
            "finished", f"{when(job['finished_at'])} (took {duration(took.total_seconds())})"
        )
    rate = job.get("items_per_second")
    grid.add_row("rate", f"{rate:.2f} items/s" if rate else "-")
    for i, notice in enumerate(notices(job)):
        grid.add_row("note" if i == 0 else "", f"[yellow]{escape(notice)}[/]")
    if job["status"] not in FINAL_STATUSES:
        grid.add_row("ETA", duration(job.get("eta_seconds")))
    grid.add_row("model", escape(job.get("model") or "-"))
    grid.add_row("params", escape(_params(job.get("params") or {})))
    if job.get("source"):
        grid.add_row("source", escape(_params(job["source"])))
    if job.get("metadata"):
        grid.add_row("metadata", escape(_params(job["metadata"])))
    if job.get("retries"):
        grid.add_row("retried", f"{job['retries']} times, last {when(job.get('retried_at'))}")
    if job.get("webhook"):
        grid.add_row("webhook", escape(webhook_line(job["webhook"])))
    output = job.get("output") or {}
    grid.add_row("output", escape(output.get("prefix", "-")))
    grid.add_row("results", escape(output.get("results", "-")))
    if job.get("error"):
        grid.add_row("error", f"[red]{escape(job['error'])}[/]")
    add_errors(grid, job, errors)
    return Panel(grid, title=f"[bold]{job['kind']} job {job['id']}[/]", expand=False)


@handle_errors
def status(
    job_id: JobId,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Show a job: counts, times, rate, ETA, where its output is, its first errors."""
    with make_client(api_url, api_key) as client:
        job = client.get_job(job_id)
        if as_json:
            print(json.dumps(job, indent=2))
            return
        errors: list[dict] = []
        for state in ("failed", "expired"):
            if job["counts"].get(state) and len(errors) < SHOWN_ERRORS:
                page = client.items(job_id, status=state, limit=SHOWN_ERRORS - len(errors))
                errors += page.get("data", [])
    out.print(status_panel(job, errors))


@handle_errors
def list_jobs(
    status: Annotated[
        str | None,
        typer.Option(
            help="Only jobs in this state: queued, running, cancelling, expiring, finalizing, "
            "succeeded, failed, cancelled, expired."
        ),
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Only caption or generate jobs.")] = None,
    label: Annotated[str | None, typer.Option(help="Only jobs with this label.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Jobs per page.")] = 20,
    after: Annotated[
        str | None, typer.Option(help="Cursor printed under the previous page.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the page as JSON.")] = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """List your jobs, newest first (with a model column when they are of several models)."""
    with make_client(api_url, api_key) as client:
        page = client.list_jobs(status=status, kind=kind, label=label, limit=limit, after=after)
    if as_json:
        print(json.dumps(page, indent=2))
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column("id", no_wrap=True)
    models = {job.get("model") for job in page["data"]}
    shown = ("label", "kind", *(("model",) if len(models) > 1 else ()), "status")
    for name in (*shown, "done", "failed", "created"):
        table.add_column(
            name,
            overflow="fold",
            justify="right" if name in ("done", "failed") else "left",
            no_wrap=name == "done",  # "284 done, 16 expired of 300" stays one line
        )
    for job in page["data"]:
        model = [escape(model_name(job.get("model") or ""))] if len(models) > 1 else []
        table.add_row(
            job["id"],
            escape(job.get("label") or ""),
            job["kind"],
            *model,
            colored(job["status"]),
            progress_text(job["counts"]),
            str(job["counts"]["failed"]),
            when(job["created_at"], "%m-%d %H:%M"),
        )
    out.print(table)
    if not page["data"]:
        err.print("no jobs")
    if page.get("has_more"):
        err.print(f"more: --after {page['next_cursor']}", soft_wrap=True)


def cancel_message(job: dict) -> str:
    """What a cancel did and what happens next (rich markup): pending items are cancelled
    now; a running item finishes if its pass has started, else it is cancelled before its
    next pass; finished items are kept."""
    counts = job["counts"]
    parts = [f"{counts['cancelled']} pending items cancelled"]
    if counts["running"]:
        parts.append(
            f"{counts['running']} running items will finish or be cancelled before their next pass"
        )
    kept = f"{counts['succeeded']} succeeded and {counts['failed']} failed kept"
    return f"{job['id']} {colored(job['status'])}: " + "; ".join([*parts, kept])


@handle_errors
def cancel(job_id: JobId, api_url: ApiUrl = DEFAULT_API_URL, api_key: ApiKey = None) -> None:
    """Cancel a job: pending items are cancelled; a running item finishes if its pass has
    started, else it is cancelled before its next pass; finished results are kept."""
    with make_client(api_url, api_key) as client:
        job = client.cancel_job(job_id)
    out.print(cancel_message(job), soft_wrap=True)


@handle_errors
def delete(
    ids: Annotated[
        list[str],
        typer.Argument(
            help="Finished job ids (job_...) or uploaded file ids (file_...).", show_default=False
        ),
    ],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Delete finished jobs (their results, images and manifests, then their records) or
    uploaded files. A running job is refused: cancel it first."""
    with make_client(api_url, api_key) as client:
        for one in ids:
            gone = client.delete_file(one) if one.startswith("file_") else client.delete_job(one)
            out.print(
                f"{gone['id']} deleted ({gone.get('objects_removed', 0)} stored objects removed)",
                soft_wrap=True,
            )


@with_exit_codes
@handle_errors
def retry(
    job_id: JobId,
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            help="Only items whose error is of these classes (comma-separated): fetch, image, "
            "model, output, worker, lost, expired, other. `status` shows each error's class.",
            show_default=False,
        ),
    ] = None,
    wait: Wait = False,
    interval: Interval = 1.0,
    timeout: Timeout = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Retry a finished job's failed (and expired) items in place: they run again with full
    attempts (an expired job in a fresh completion window of the same length), the job's
    counts and manifests are updated when it ends again. Items that failed before they ran
    (invalid inputs) are not retried."""
    classes = [c.strip() for c in only.split(",") if c.strip()] if only is not None else None
    with make_client(api_url, api_key) as client:
        job = client.retry_job(job_id, classes)
        counts = job["counts"]
        again = counts["pending"] + counts["running"]
        which = f" of class {', '.join(classes)}" if classes else ""
        err.print(
            f"{job['id']} {colored(job['status'])}: retrying {again} failed items{which}; "
            f"{counts['succeeded']} succeeded and {counts['failed']} failed kept",
            soft_wrap=True,
        )
        if wait:
            raise typer.Exit(wait_for(client, job_id, interval=interval, timeout=timeout))


@handle_errors
def webhook_secret(
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Print the secret that signs your jobs' webhooks (alone on stdout): X-Janus-Signature
    is `v1=` + hex HMAC-SHA256 of `X-Janus-Timestamp + "." + body` with it."""
    with make_client(api_url, api_key) as client:
        print(client.webhook_secret()["secret"])


@with_exit_codes
@handle_errors
def watch(
    job_id: JobId,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls.")] = 1.0,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Stop waiting after this many seconds (exit 5).")
    ] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Follow a job with a live progress bar until it ends.

    The bar shows succeeded / failed / total, items per second and the ETA.
    """
    with make_client(api_url, api_key) as client:
        raise typer.Exit(wait_for(client, job_id, interval=interval, timeout=timeout))
