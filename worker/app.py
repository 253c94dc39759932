"""The Celery app of the worker: `celery -A worker.app ...`. Importing it reads the settings
(it is an entry point); the model is loaded when a worker process starts, never at import.

One GPU worker process per GPU (pin it with CUDA_VISIBLE_DEVICES), its threads pool running
a few chunks at once (their requests share the engine's passes, `worker.pipeline`):

    CUDA_VISIBLE_DEVICES=0 celery -A worker.app worker -P threads -c 16 \\
        -Q janus.caption,janus.generate -E --loglevel INFO -n gpu0@%h

and one control worker per deployment, so expand, finalize and sweep never wait behind GPU
work (it loads no model; `-B` runs the sweeper's schedule in it):

    celery -A worker.app worker -P threads -c 2 -Q janus.control -E -B --loglevel INFO \\
        -n control@%h

A worker that serves only `-Q janus.control` loads no model. CPU
works too (JANUS_BATCH_DEVICE=cpu). All settings are `JANUS_BATCH_*` variables; with
JANUS_BATCH_METRICS_PORT=9100 each worker process serves Prometheus metrics there (the
objects of `worker.metrics`, served from the process that runs the tasks).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from janus_batch import constants
from janus_batch.db import dispose_engines
from janus_batch.queue import get_celery
from janus_batch.settings import get_settings
from worker import metrics, runtime
from worker.context import current_context, storage_down_since
from worker.presence import Presence

log = logging.getLogger(__name__)

MODEL_QUEUES = frozenset({constants.CAPTION_QUEUE, constants.GENERATE_QUEUE})

_needs_model = True


def consumes_model_queues(queue_names: Any) -> bool:
    """Whether a worker consuming `queue_names` (None: all queues) runs the model."""
    return not queue_names or bool(MODEL_QUEUES & set(queue_names))


def serve_metrics(port: int) -> bool:
    """Serve this process's metrics on `port`; False (logged) if the port is taken, e.g. by
    a second prefork child: run `-P solo`, one process and one port per GPU."""
    try:
        metrics.start_worker_metrics_server(port)
    except OSError as exc:
        log.warning("metrics not served on port %d: %s", port, exc)
        return False
    return True


_threads_pool = False
_presence: Presence | None = None


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, before any pool: note whether the model is needed and
    whether tasks run in this process (threads pool: no fork, no worker_process_init)."""
    global _needs_model, _threads_pool
    consume_from = getattr(getattr(sender.app.amqp, "queues", None), "consume_from", None)
    _needs_model = consumes_model_queues(list(consume_from or ()))
    from celery.concurrency import get_implementation
    from celery.concurrency.thread import TaskPool

    _threads_pool = get_implementation(sender.pool_cls) is TaskPool


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """Announce the worker and its queues (`janus_batch.fleet`); a threads-pool worker runs
    its tasks in this process: set it up here, once logging is configured (a chunk task
    waits for the model before it claims anything)."""
    global _presence
    queues = [q.name for q in sender.task_consumer.queues] if sender is not None else []
    _presence = Presence(
        get_settings(), sender.hostname, queues, storage_down_since=storage_down_since
    ).start()
    if _threads_pool:
        _on_process_init()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    """Withdraw the announcement at once (a killed worker's key expires by itself)."""
    if _presence is not None:
        _presence.stop()


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    """In each process that runs tasks (a prefork child, the solo worker itself, or the
    threads-pool worker): drop connections inherited over fork, serve the metrics, then
    start the pipeline, whose engine thread loads the model (the only thread that touches
    the device)."""
    dispose_engines()
    runtime.reset()
    settings = get_settings()
    runtime.configure_torch(settings)
    if settings.metrics_port:
        serve_metrics(settings.metrics_port)
    if _needs_model:
        log.info("loading model %s on %s", settings.model, settings.device)
        current_context().pipeline()
    else:
        log.info("control-only worker: no model loaded")


app = get_celery()

import worker.tasks  # noqa: E402, F401  (registers the tasks on the app, which must exist first)
