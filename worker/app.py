"""The Celery app of the worker: `celery -A worker.app ...`. Importing it reads the settings
(it is an entry point); the model is loaded when a worker process starts, never at import.

One worker process per GPU (pin it with CUDA_VISIBLE_DEVICES), each serving all queues:

    CUDA_VISIBLE_DEVICES=0 celery -A worker.app worker -P solo -c 1 \\
        -Q janus.caption,janus.generate,janus.control -E --loglevel INFO

The sweeper runs on Celery beat, either inside one worker (add `-B`) or as its own process:

    celery -A worker.app beat --loglevel INFO

A worker that serves only `-Q janus.control` (expand, finalize, sweep) loads no model. CPU
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


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, before any pool: note whether the model is needed."""
    global _needs_model
    consume_from = getattr(getattr(sender.app.amqp, "queues", None), "consume_from", None)
    _needs_model = consumes_model_queues(list(consume_from or ()))


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    """In each process that runs tasks (a prefork child, or the solo worker itself): drop
    connections inherited over fork, serve the metrics, then load the model once."""
    dispose_engines()
    runtime.reset()
    settings = get_settings()
    runtime.configure_torch(settings)
    if settings.metrics_port:
        serve_metrics(settings.metrics_port)
    if _needs_model:
        log.info("loading model %s on %s", settings.model, settings.device)
        runtime.get_engine()
    else:
        log.info("control-only worker: no model loaded")


app = get_celery()

import worker.tasks  # noqa: E402, F401  (registers the tasks on the app, which must exist first)
