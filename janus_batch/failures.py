"""What made an item fail, in a few classes a retry can pick (`POST /v1/jobs/{id}/retry`).

A failed item's `error` is written by the worker with a fixed prefix per cause, so its class
is read from the text, the same way in Python (`classify`, shown with each item) and in SQL
(`matching`, one conditional UPDATE for a whole retry):

| class    | the worker wrote                                                                 |
| -------- | -------------------------------------------------------------------------------- |
| `fetch`  | the input could not be had: `cannot fetch ...` (404, refused by the egress policy, |
|          | a host still failing after its deferrals), `unsupported input URI`, `invalid     |
|          | input`, `input ... is larger than the ...-byte limit`                            |
| `image`  | the bytes are not a usable image: `cannot read image ...`, `JanusImageError: ...` |
| `model`  | the engine refused or failed: `model error: ...` (a failed pass, out of memory),  |
|          | `JanusRequestError: ...`, `JanusRuntimeError: ...`, `invalid request: ...`        |
| `output` | a generated image could not be stored: `cannot store image ...`                  |
| `worker` | an unexpected error in the worker: `worker error: ...`                           |
| `lost`   | the item's worker was lost MAX_ATTEMPTS times (killed or crashed: a poison pill)  |
| `expired`| not finished within the job's completion window: `expired: ...` (status expired)  |
| `other`  | anything else                                                                    |

Items that failed before they ever ran (attempts 0: a malformed manifest line, an input
refused when the source was read) show the class `input` and are never retried: the same
input would fail the same way.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from enum import StrEnum
from functools import lru_cache

from sqlalchemy import ColumnElement, false, not_, or_

from janus_batch.expiry import EXPIRED_PREFIX
from janus_batch.lifecycle import POISON_PREFIX
from janus_batch.models import Item


class ErrorClass(StrEnum):
    """The cause of a failed item, as far as a retry cares."""

    FETCH = "fetch"
    IMAGE = "image"
    MODEL = "model"
    OUTPUT = "output"
    WORKER = "worker"
    LOST = "lost"
    EXPIRED = "expired"
    OTHER = "other"


PATTERNS: dict[ErrorClass, tuple[str, ...]] = {
    # SQL LIKE patterns of the errors the worker writes (worker/fetch.py, worker/caption.py,
    # worker/generate.py, worker/chunk.py, worker/pipeline.py, janus/errors.py)
    ErrorClass.FETCH: (
        "cannot fetch %",
        "unsupported input URI %",
        "invalid input %",
        "input % is larger than the %",
    ),
    ErrorClass.IMAGE: ("cannot read image %", "JanusImageError: %"),
    ErrorClass.MODEL: (
        "model error: %",
        "JanusRequestError: %",
        "JanusRuntimeError: %",
        "invalid request: %",
    ),
    ErrorClass.OUTPUT: ("cannot store %",),
    ErrorClass.WORKER: ("worker error: %",),
    ErrorClass.LOST: (f"{POISON_PREFIX}%",),
    ErrorClass.EXPIRED: (f"{EXPIRED_PREFIX}%",),
}


NOT_RUN = "input"
"""The class shown for an item that failed before it ever ran (never retried)."""


@lru_cache
def _regex(pattern: str) -> re.Pattern[str]:
    parts = (re.escape(p) for p in pattern.split("%"))
    return re.compile(".*".join(p.replace("_", ".") for p in parts), re.DOTALL)


def classify(error: str | None) -> ErrorClass:
    """The class of a failed item's error text."""
    text = error or ""
    for cls, patterns in PATTERNS.items():
        if any(_regex(p).fullmatch(text) for p in patterns):
            return cls
    return ErrorClass.OTHER


def describe(error: str | None, attempts: int) -> str:
    """The class shown with a failed or expired item: NOT_RUN if it failed before it ran,
    else `classify` (an expired item is `expired`, run or not)."""
    cls = classify(error)
    return NOT_RUN if attempts == 0 and cls != ErrorClass.EXPIRED else cls.value


def _known(cls: ErrorClass) -> ColumnElement[bool]:
    return or_(*(Item.error.like(p) for p in PATTERNS[cls]))


def matching(classes: Collection[ErrorClass] | None) -> ColumnElement[bool] | None:
    """A condition on `Item.error` for the items of `classes`; None for every class."""
    if classes is None or set(classes) >= set(ErrorClass):
        return None
    conditions = [_known(c) for c in classes if c != ErrorClass.OTHER]
    if ErrorClass.OTHER in classes:
        known = or_(*(_known(c) for c in PATTERNS))
        conditions.append(or_(Item.error.is_(None), not_(known)))
    return or_(*conditions) if conditions else false()


def parse_classes(values: Collection[str]) -> list[ErrorClass]:
    """Class names as given (`["fetch", "image"]`), checked; ValueError naming a bad one."""
    found: list[ErrorClass] = []
    for value in values:
        name = value.strip().lower()
        if name == NOT_RUN:
            raise ValueError(
                f"items of class {NOT_RUN} failed before they ran (invalid inputs) and are "
                "never retried: resubmit them corrected"
            )
        try:
            cls = ErrorClass(name)
        except ValueError:
            names = ", ".join(ErrorClass)
            raise ValueError(f"unknown error class {value!r}: use {names}") from None
        if cls not in found:
            found.append(cls)
    return found
