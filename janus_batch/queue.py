"""The Celery application: broker settings, queues, routes; sending chunk messages by name.

Both the API and the workers build the app from here. The API only *sends* tasks (by
name), so it never imports the worker code, torch or the model.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from itertools import islice
from typing import TypeVar

from celery import Celery
from kombu import Queue

from janus_batch import constants
from janus_batch.settings import Settings, get_settings
from janus_batch.states import JobKind

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK_TASKS = {
    JobKind.CAPTION: constants.CAPTION_CHUNK_TASK,
    JobKind.GENERATE: constants.GENERATE_CHUNK_TASK,
}
CHUNK_QUEUES = {
    JobKind.CAPTION: constants.CAPTION_QUEUE,
    JobKind.GENERATE: constants.GENERATE_QUEUE,
}


SLUG_CHARS = 40
"""Most characters of a model's name kept in its queue names (the end of it)."""


def model_slug(model: str) -> str:
    """A Redis- and kombu-safe short form of a public model name: lowercase letters, digits
    and dashes from the end of the name, then 8 hex digits of its SHA-256, so two names
    never share a queue (`/models/Janus-Pro-7B` -> `models-janus-pro-7b-6998f38d`)."""
    words = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    slug = words[-SLUG_CHARS:].strip("-") or "model"
    return f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def chunk_queue(kind: str, model: str, default_model: str) -> str:
    """The queue of `kind` chunks of jobs on `model`: the plain kind queue (`janus.caption`)
    for the fleet's default model, so a one-model deployment is what it always was; for
    any other model the kind queue followed by its slug (`janus.caption.janus-pro-7b-...`)."""
    base = CHUNK_QUEUES[JobKind(kind)]
    return base if model == default_model else f"{base}.{model_slug(model)}"


def is_chunk_queue(name: str) -> bool:
    """Whether `name` is a chunk queue (of any kind and model): work that needs the model."""
    return any(name == base or name.startswith(f"{base}.") for base in CHUNK_QUEUES.values())


def chunk_queues(models: Iterable[str], default_model: str) -> list[str]:
    """The chunk queues of `models`, kind by kind, the default model's first."""
    ordered = sorted(set(models) | {default_model}, key=lambda m: (m != default_model, m))
    return [chunk_queue(kind, model, default_model) for kind in JobKind for model in ordered]


def default_model(app: Celery) -> str:
    """The fleet's default model as `app` was built with (it routes chunks by it)."""
    return str(app.conf.janus_default_model)


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for janus-batch from `settings`; it keeps the default model
    (`janus_default_model`), which decides the queue names of every model's chunks."""
    app = Celery("janus_batch", broker=settings.redis_url)
    transport: dict[str, int | str] = {"visibility_timeout": settings.visibility_timeout}
    if settings.queue_prefix:
        transport["global_keyprefix"] = settings.queue_prefix
    app.conf.update(
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_queues=[
            Queue(constants.CAPTION_QUEUE),
            Queue(constants.GENERATE_QUEUE),
            Queue(constants.CONTROL_QUEUE),
        ],
        task_default_queue=constants.CONTROL_QUEUE,
        task_routes={
            constants.CAPTION_CHUNK_TASK: {"queue": constants.CAPTION_QUEUE},
            constants.GENERATE_CHUNK_TASK: {"queue": constants.GENERATE_QUEUE},
            constants.EXPAND_SOURCE_TASK: {"queue": constants.CONTROL_QUEUE},
            constants.FINALIZE_JOB_TASK: {"queue": constants.CONTROL_QUEUE},
            constants.SWEEP_TASK: {"queue": constants.CONTROL_QUEUE},
            constants.SEND_WEBHOOK_TASK: {"queue": constants.CONTROL_QUEUE},
        },
        # A chunk is acknowledged only when done; a worker lost mid-chunk gives it back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # Flower shows tasks only when workers send events.
        worker_send_task_events=True,
        task_send_sent_event=True,
        # Loading a model in worker_process_init takes longer than the 4 s default.
        worker_proc_alive_timeout=600,
        beat_schedule={
            "janus-sweep": {"task": constants.SWEEP_TASK, "schedule": settings.sweep_interval},
        },
        timezone="UTC",
        janus_default_model=settings.resolved_default_model(),
    )
    return app


@lru_cache
def get_celery() -> Celery:
    """The process's Celery app, built from the cached settings."""
    return make_celery(get_settings())


def chunked(values: Iterable[T], size: int) -> Iterator[list[T]]:
    """Split an iterable (ids, items) into lists of at most `size`, lazily."""
    it = iter(values)
    while chunk := list(islice(it, size)):
        yield chunk


def chunk_task_name(kind: str, label: str | None = None, model: str | None = None) -> str:
    """The name a chunk task shows in Flower and the worker's log: its task name, then the
    job's model in brackets when it is not the default one, then the job's label if it has
    one (`janus.caption_chunk [janus-pro-7b] nightly-crawl`)."""
    parts = [CHUNK_TASKS[JobKind(kind)], f"[{model}]" if model else None, label]
    return " ".join(part for part in parts if part)


def send_chunk(
    app: Celery,
    kind: str,
    job_id: str,
    item_ids: Sequence[int],
    label: str | None = None,
    model: str | None = None,
) -> None:
    """Enqueue one chunk message: the job id and the ids of its items (never payloads), on
    the queue of the job's `model` (`chunk_queue`; None: the default model), shown under
    `chunk_task_name` (Celery's `shadow` name)."""
    kind = JobKind(kind)
    default = default_model(app)
    model = model or default
    shown = model if model != default else None
    app.send_task(
        CHUNK_TASKS[kind],
        args=[job_id, list(item_ids)],
        queue=chunk_queue(kind, model, default),
        shadow=chunk_task_name(kind, label, shown) if label or shown else None,
    )


def send_control(app: Celery, task: str, *args: object, countdown: float | None = None) -> None:
    """Enqueue a control task (expand, finalize, sweep, send a webhook, dispatch a job's
    deferred items) on the control queue, to run now or `countdown` seconds from now."""
    app.send_task(task, args=list(args), queue=constants.CONTROL_QUEUE, countdown=countdown)
