"""The Celery application: broker settings, queues, routes; sending chunk messages by name.

Both the API and the workers build the app from here. The API only *sends* tasks (by
name), so it never imports the worker code, torch or the model.
"""

from __future__ import annotations

import logging
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


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for janus-batch from `settings`."""
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


def chunk_task_name(kind: str, label: str | None = None) -> str:
    """The name a chunk task shows in Flower and the worker's log: its task name, followed by
    the job's label if it has one (`janus.caption_chunk nightly-crawl`)."""
    task = CHUNK_TASKS[JobKind(kind)]
    return f"{task} {label}" if label else task


def send_chunk(
    app: Celery, kind: str, job_id: str, item_ids: Sequence[int], label: str | None = None
) -> None:
    """Enqueue one chunk message: the job id and the ids of its items (never payloads),
    shown under `chunk_task_name` (Celery's `shadow` name)."""
    kind = JobKind(kind)
    app.send_task(
        CHUNK_TASKS[kind],
        args=[job_id, list(item_ids)],
        queue=CHUNK_QUEUES[kind],
        shadow=chunk_task_name(kind, label) if label else None,
    )


def send_control(app: Celery, task: str, *args: object, countdown: float | None = None) -> None:
    """Enqueue a control task (expand, finalize, sweep, send a webhook, dispatch a job's
    deferred items) on the control queue, to run now or `countdown` seconds from now."""
    app.send_task(task, args=list(args), queue=constants.CONTROL_QUEUE, countdown=countdown)
