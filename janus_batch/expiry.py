"""Completion windows: a job may name how long it may take (`completion_window`: "30m",
"24h", "7d" or seconds) or when it must be done (`expires_at`, ISO 8601 with a timezone);
items not finished by then become `expired` and the job ends `expired` with what it finished.

Pure functions (no SQL): the job service turns a request into a deadline (`deadline`), the
lifecycle writes the expired items' error (`expired_error`), a retry gives a fresh window of
the same length (`window_of`). The sweeper and the worker notice a deadline (`overdue`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from janus_batch.models import as_utc

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_WINDOW_RE = re.compile(r"(\d{1,9})\s*([smhd]?)")
EXPIRED_PREFIX = "expired: "
"""How an expired item's error starts (`janus_batch.failures` classes it by it)."""


class WindowError(ValueError):
    """A completion window or deadline the service refuses; names the request's field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_window(value: Any, field: str = "completion_window") -> int:
    """Seconds of a window: "90s", "30m", "24h", "7d", or a whole number of seconds (an int
    or a string of digits); 0 is allowed here (callers decide what it means)."""
    if isinstance(value, bool):
        raise WindowError(field, "must be a duration such as 30m, 24h or 7d, or seconds")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (match := _WINDOW_RE.fullmatch(value.strip().lower())):
        seconds = int(match[1]) * UNITS[match[2] or "s"]
    else:
        raise WindowError(field, "must be a duration such as 30m, 24h or 7d, or seconds")
    if seconds < 0:
        raise WindowError(field, "must not be negative")
    return seconds


def format_window(seconds: float) -> str:
    """A window as people write it: `7d` (whole days past one), `24h`, `1h 30m`, `45s`."""
    total = max(0, round(seconds))
    if total >= 2 * 86400 and total % 86400 == 0:
        return f"{total // 86400}d"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return " ".join(parts) or "0s"


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Deadline:
    """A job's deadline, and what of the request it came from (for the request's
    fingerprint: None when the request named no window and a default applied)."""

    expires_at: datetime | None
    requested: dict[str, Any] | None


def deadline(
    completion_window: Any,
    expires_at: Any,
    *,
    now: datetime,
    default_seconds: int,
    max_seconds: int,
) -> Deadline:
    """When a job submitted `now` expires: `now + completion_window`, or `expires_at`, or the
    default window (0: never); WindowError naming the field for both given, a malformed or
    zero window, a naive or past `expires_at`, or one beyond `max_seconds` (0: no maximum)."""
    if completion_window is not None and expires_at is not None:
        raise WindowError("completion_window", "give completion_window or expires_at, not both")
    if completion_window is not None:
        seconds = parse_window(completion_window)
        if seconds == 0:
            raise WindowError("completion_window", "must be longer than 0 s")
        _check_max("completion_window", seconds, max_seconds)
        return Deadline(now + timedelta(seconds=seconds), {"completion_window": seconds})
    if expires_at is not None:
        when = parse_time(expires_at)
        if when <= now:
            raise WindowError("expires_at", f"is in the past ({_stamp(when)})")
        _check_max("expires_at", (when - now).total_seconds(), max_seconds)
        return Deadline(when, {"expires_at": _stamp(when)})
    if default_seconds:
        return Deadline(now + timedelta(seconds=default_seconds), None)
    return Deadline(None, None)


def parse_time(value: Any, field: str = "expires_at") -> datetime:
    """A timezone-aware ISO 8601 time (a string or a datetime), in UTC."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str) and len(value) <= 64:
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise WindowError(
                field, "must be an ISO 8601 time such as 2026-12-04T10:00:00Z"
            ) from None
    else:
        raise WindowError(field, "must be an ISO 8601 time such as 2026-12-04T10:00:00Z")
    if when.tzinfo is None or when.utcoffset() is None:
        raise WindowError(field, "must name its timezone (Z or +02:00)")
    return when.astimezone(UTC)


def _check_max(field: str, seconds: float, max_seconds: int) -> None:
    if max_seconds and seconds > max_seconds:
        raise WindowError(
            field,
            f"is beyond the longest completion window allowed ({format_window(max_seconds)}: "
            "JANUS_BATCH_MAX_COMPLETION_WINDOW)",
        )


def window_of(expires_at: datetime, started: datetime) -> timedelta:
    """The length of a job's window: from its submit (or its last retry) to its deadline."""
    return as_utc(expires_at) - as_utc(started)


def expired_error(expires_at: datetime | None, started: datetime) -> str:
    """The error of an item not finished by the job's deadline (errors.jsonl, the items)."""
    if expires_at is None:  # not a deadline's doing: said plainly all the same
        return f"{EXPIRED_PREFIX}not finished within the job's completion window"
    window = format_window(window_of(expires_at, started).total_seconds())
    return (
        f"{EXPIRED_PREFIX}not finished within the job's completion window ({window}, "
        f"ended {_stamp(as_utc(expires_at))})"
    )


def overdue(expires_at: datetime | None, now: datetime) -> bool:
    """Whether a deadline has passed."""
    return expires_at is not None and as_utc(expires_at) <= now
