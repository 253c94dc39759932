"""Live progress of jobs in the terminal (rich), shared by `watch`, `--wait` and the demo.

The bar counts done items (succeeded + failed) of the total, so a cancelled or expired job's
bar stops short of full; the text beside it shows the split (cancelled and expired apart), the
API's rate (items/s), ETA and the job's deadline. `exit_code` maps a final job to the
CLI's exit status.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Self

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from janus_batch.client.cli.common import (
    CANCELLED,
    EXPIRED,
    INTERRUPTED,
    ITEMS_FAILED,
    JOB_FAILED,
    OK,
    TIMED_OUT,
    err,
)
from janus_batch.client.http import FINAL_STATUSES, Client


def duration(seconds: float | None) -> str:
    """`75.2` -> `1:15`, `3725` -> `1:02:05`, None -> `-`."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe(job: dict) -> str:
    """`running    3 ok  1 failed  2.50 items/s  ETA 0:04` (rich markup)."""
    counts = job["counts"]
    rate = job.get("items_per_second")
    parts = [
        f"[green]{counts['succeeded']} ok[/]",
        f"[red]{counts['failed']} failed[/]",
    ]
    if counts.get("cancelled"):
        parts.append(f"[yellow]{counts['cancelled']} cancelled[/]")
    if counts.get("expired"):
        parts.append(f"[magenta]{counts['expired']} expired[/]")
    parts.append(f"{rate:.2f} items/s" if rate else "- items/s")
    if job["status"] not in FINAL_STATUSES:
        parts.append(f"ETA {duration(job.get('eta_seconds'))}")
        if job.get("expires_at"):
            parts.append(f"expires {deadline(job['expires_at'])}")
    return f"{job['status']:<10} " + "  ".join(parts)


def deadline(value: str) -> str:
    """An API time as a short local one: `14:05` today, else `11-23 14:05`."""
    moment = datetime.fromisoformat(value).astimezone()
    today = datetime.now().astimezone().date()
    return moment.strftime("%H:%M" if moment.date() == today else "%m-%d %H:%M")


NO_WORKER = (
    "no live worker consumes this job's queue: it waits until one starts "
    "(README: Running it as a service)"
)


def no_worker(job: dict) -> bool:
    """The API says no live worker would run this unfinished job."""
    return job.get("live_workers") == 0 and job["status"] not in FINAL_STATUSES


def notices(job: dict) -> list[str]:
    """What holds an unfinished job up, as plain text: no live worker, items waiting out a
    storage (or input host) outage, and the API's notes (e.g. no sweeper running)."""
    if job["status"] in FINAL_STATUSES:
        return []
    found = [NO_WORKER] if no_worker(job) else []
    waiting = job.get("waiting")
    if waiting:
        since = datetime.fromisoformat(waiting["since"]).astimezone().strftime("%H:%M:%S")
        found.append(
            f"items waiting since {since} (retried by themselves, none failed for it): "
            f"{waiting['reason']}"
        )
    return found + list(job.get("notes") or [])


def watch_jobs(
    client: Client,
    job_ids: list[str],
    console: Console,
    interval: float = 1.0,
    timeout: float | None = None,
) -> list[dict]:
    """Show a progress bar per job until every job is final; returns the final jobs.
    TimeoutError if `timeout` seconds pass first. On a console that is not a terminal (a
    log file, CI), a line is printed each time a job's counts change instead."""
    deadline = None if timeout is None else time.monotonic() + timeout
    jobs: dict[str, dict] = {}
    warned: set[tuple[str, str]] = set()
    with _Display(console, job_ids) as display:
        while True:
            for job_id in job_ids:
                if jobs.get(job_id, {}).get("status") not in FINAL_STATUSES:
                    jobs[job_id] = client.get_job(job_id)
                    display.show(jobs[job_id])
                    for notice in notices(jobs[job_id]):
                        if (job_id, notice) not in warned:
                            warned.add((job_id, notice))
                            text = escape(f"{job_id}: {notice}")
                            console.print(f"[yellow]{text}[/]", soft_wrap=True)
            if all(job["status"] in FINAL_STATUSES for job in jobs.values()):
                return [jobs[job_id] for job_id in job_ids]
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"jobs not finished after {timeout:.0f}s")
            time.sleep(interval)


class _Display:
    """Rich progress bars on a terminal; one line per change elsewhere."""

    def __init__(self, console: Console, job_ids: list[str]) -> None:
        self.console = console
        self.live = console.is_terminal
        self.last: dict[str, str] = {}
        self.progress = Progress(
            TextColumn("[bold]{task.fields[label]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not self.live,
        )
        self.tasks = {
            job_id: self.progress.add_task("", total=None, label=job_id, detail="")
            for job_id in job_ids
        }

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def show(self, job: dict) -> None:
        counts = job["counts"]
        done = counts["succeeded"] + counts["failed"]  # cancelled or expired items are not
        if self.live:
            task = self.tasks[job["id"]]
            self.progress.update(
                task,
                total=counts["total"] or None,
                completed=done,
                label=f"{job['kind']} {job['id']}",
                detail=describe(job),
            )
            if job["status"] in FINAL_STATUSES:
                self.progress.stop_task(task)
            return
        state = (
            f"{job['status']} {done}/{counts['total']} {counts['failed']} "
            f"{counts['cancelled']} {counts.get('expired', 0)}"
        )
        if self.last.get(job["id"]) != state:
            self.last[job["id"]] = state
            self.console.print(
                f"{job['id']} {done}/{counts['total']} {describe(job)}", soft_wrap=True
            )


def wait_for(
    client: Client, job_id: str, *, interval: float = 1.0, timeout: float | None = None
) -> int:
    """Watch one job on stderr until it is final, print a summary line; its exit code."""
    try:
        [job] = watch_jobs(client, [job_id], err, interval=interval, timeout=timeout)
    except TimeoutError:
        err.print(
            f"[yellow]{job_id} still running after {timeout:.0f}s[/] "
            f"(janus-batch watch {job_id} to follow it)",
            soft_wrap=True,
        )
        return TIMED_OUT
    except KeyboardInterrupt:
        err.print(
            f"[yellow]stopped watching[/]: {job_id} keeps running "
            f"(janus-batch watch {job_id}, janus-batch cancel {job_id})",
            soft_wrap=True,
        )
        return INTERRUPTED
    err.print(summary(job), soft_wrap=True)
    return exit_code(job)


def exit_code(job: dict) -> int:
    """0 when every item succeeded; 1 if some items failed; 2 if the job was cancelled;
    3 if the job failed as a whole (its source could not be read, or no item succeeded);
    6 if it expired (its completion window ended with items left)."""
    if job["status"] == "cancelled":
        return CANCELLED
    if job["status"] == "expired":
        return EXPIRED
    if job["status"] == "failed":
        return JOB_FAILED
    return ITEMS_FAILED if job["counts"]["failed"] else OK


def summary(job: dict) -> str:
    """One line about a final job (rich markup), e.g.
    `job_1 succeeded: 3/4 succeeded, 1 failed in 0:12 (0.33 items/s)`."""
    counts = job["counts"]
    color = {
        "succeeded": "green",
        "failed": "red",
        "cancelled": "yellow",
        "expired": "magenta",
    }.get(job["status"], "white")
    color = "yellow" if color == "green" and counts["failed"] else color
    parts = [f"{counts['succeeded']}/{counts['total']} succeeded"]
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed")
    if counts["cancelled"]:
        parts.append(f"{counts['cancelled']} cancelled")
    if counts.get("expired"):
        parts.append(f"{counts['expired']} expired (not finished within its completion window)")
    text = f"[{color}]{job['id']} {job['status']}[/]: " + ", ".join(parts)
    elapsed = _elapsed(job)
    if elapsed is not None:
        text += f" in {duration(elapsed)}"
    if job.get("items_per_second"):
        text += f" ({job['items_per_second']:.2f} items/s)"
    if job.get("error"):
        text += f" - {escape(job['error'])}"
    return text


def _elapsed(job: dict) -> float | None:
    from datetime import datetime

    start, end = job.get("started_at"), job.get("finished_at")
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
