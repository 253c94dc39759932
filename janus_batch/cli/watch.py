"""Live progress of jobs in the terminal (rich), shared by `watch`, `--wait` and the demo."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from janus_batch.client import FINAL_STATUSES, Client


def _describe(job: dict) -> str:
    counts = job["counts"]
    rate = job.get("items_per_second")
    eta = job.get("eta_seconds")
    parts = [
        f"[green]{counts['succeeded']} ok[/]",
        f"[red]{counts['failed']} failed[/]",
    ]
    if counts.get("cancelled"):
        parts.append(f"[yellow]{counts['cancelled']} cancelled[/]")
    parts.append(f"{rate:.2f} items/s" if rate else "- items/s")
    parts.append(f"ETA {int(eta)}s" if eta is not None else "ETA -")
    return f"{job['status']:<10} " + "  ".join(parts)


def watch_jobs(
    client: Client, job_ids: list[str], console: Console, interval: float = 1.0,
    timeout: float | None = None,
) -> list[dict]:
    """Show a progress bar per job until every job is final; returns the final jobs."""
    columns = (
        TextColumn("[bold]{task.fields[label]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    deadline = None if timeout is None else time.monotonic() + timeout
    jobs: dict[str, dict] = {}
    with Progress(*columns, console=console, transient=False) as progress:
        tasks = {
            job_id: progress.add_task("", total=None, label=job_id, detail="")
            for job_id in job_ids
        }
        while True:
            for job_id in job_ids:
                job = jobs[job_id] = client.get_job(job_id)
                counts = job["counts"]
                done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
                progress.update(
                    tasks[job_id],
                    total=counts["total"] or None,
                    completed=done,
                    label=f"{job['kind']} {job_id}",
                    detail=_describe(job),
                )
            if all(job["status"] in FINAL_STATUSES for job in jobs.values()):
                return [jobs[job_id] for job_id in job_ids]
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"jobs not finished after {timeout:.0f}s")
            time.sleep(interval)


def exit_code(job: dict) -> int:
    """0 when every item succeeded; 1 if items failed; 2 if the job was cancelled; 3 if the
    job failed as a whole."""
    if job["status"] == "cancelled":
        return 2
    if job["status"] == "failed" and job["counts"]["succeeded"] == 0:
        return 3
    return 1 if job["counts"]["failed"] else 0
