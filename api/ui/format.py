"""Jinja filters of the dashboard: durations, rates, times, progress-bar segments."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from api.schemas import JobPublic
from janus_batch.states import JOB_FINAL, JobStatus

SEGMENTS = ("succeeded", "failed", "cancelled", "expired", "running")
"""Progress-bar segments, left to right; the rest of the bar is pending."""


def duration(seconds: float | None) -> str:
    """`3h 04m`, `12m 05s`, `42s`; an em dash when unknown."""
    if seconds is None:
        return "—"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def eta(job: JobPublic) -> str:
    """The time left, `done` once final, `—` while unknown."""
    if job.status in JOB_FINAL:
        return "done"
    return duration(job.eta_seconds)


def rate(value: float | None) -> str:
    """Items per second (one unit everywhere, as the API and the CLI give it), with precision
    that suits the size: `1,234/s`, `12.5/s`, `0.42/s`, `0.0031/s`."""
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}/s"
    if value >= 10:
        return f"{value:.1f}/s"
    if value >= 0.01 or value <= 0:
        return f"{value:.2f}/s"
    return f"{value:.2g}/s"


def when(value: datetime | None, seconds: bool = False, zone: bool = True) -> str:
    """A UTC timestamp, `2025-01-31 14:05 UTC` (with seconds, without the zone on request)."""
    if value is None:
        return "—"
    text = value.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{text} UTC" if zone else text


def elapsed(job: JobPublic) -> str:
    """Running time: start to finish, or start to now."""
    if job.started_at is None:
        return "—"
    end = job.finished_at or datetime.now(job.started_at.tzinfo)
    return duration((end - job.started_at).total_seconds())


def segments(job: JobPublic) -> list[tuple[str, int, int]]:
    """(state, width in whole percent, count) for each non-empty bar segment: the width is a
    CSS class (`w0`..`w100`, the dashboard's CSP allows no inline style), at least 1 so a
    single failure among thousands still shows."""
    total = job.counts.total
    if total <= 0:
        return []
    out = []
    for name in SEGMENTS:
        n = getattr(job.counts, name)
        if n > 0:
            out.append((name, min(100, max(1, round(100 * n / total))), n))
    return out


def done_percent(job: JobPublic) -> int:
    """Items done (succeeded or failed) over total, as a whole percent (0 while the total is
    unknown); cancelled and expired items are not done."""
    c = job.counts
    return int(100 * (c.succeeded + c.failed) / c.total) if c.total else 0


def no_results(job: JobPublic) -> str:
    """What an empty gallery or caption table says: `yet` only while the job may still
    produce some; once it is over, why there are none."""
    what = "images" if job.kind == "generate" else "captions"
    c = job.counts
    if job.status not in JOB_FINAL:
        return f"No {what} yet."
    if c.succeeded:
        return f"No more {what}."
    if c.total == 0:
        return f"No {what}: the job had no items."
    if c.expired and not c.failed:
        return f"No {what}: the job's completion window ended before any item succeeded."
    if c.expired:
        return f"No {what}: no item succeeded (the failed ones are below, the rest expired)."
    if c.cancelled and not c.failed:
        return f"No {what}: the job was cancelled before any item succeeded."
    if c.cancelled:
        return f"No {what}: no item succeeded (the failed ones are below, the rest cancelled)."
    return f"No {what}: every item failed (see the errors below)."


def short_json(value: Any, limit: int = 160) -> str:
    """Compact JSON, cut at `limit` characters."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def input_summary(kind: str, data: dict[str, Any] | None) -> str:
    """What an item asked for, in one line: its image or its prompt."""
    data = data or {}
    if kind == "caption":
        return str(data.get("image") or data.get("uri") or short_json(data))
    return str(data.get("prompt") or short_json(data))


FILTERS = {
    "duration": duration,
    "eta": eta,
    "rate": rate,
    "when": when,
    "elapsed": elapsed,
    "segments": segments,
    "done_percent": done_percent,
    "no_results": no_results,
    "short_json": short_json,
}


def is_final(job: JobPublic) -> bool:
    """The job is succeeded, failed, cancelled or expired."""
    return job.status in JOB_FINAL


def is_cancellable(job: JobPublic) -> bool:
    """The job still has work that a cancel would stop."""
    return job.status in (JobStatus.QUEUED, JobStatus.RUNNING)


TESTS = {"final": is_final, "cancellable": is_cancellable}
