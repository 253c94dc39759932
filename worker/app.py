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

A GPU worker serves one model, JANUS_BATCH_MODEL, under its public name
(JANUS_BATCH_MODEL_NAME, default: MODEL as written): `-Q janus.caption,janus.generate` means
the queues of that model (the plain ones for the fleet's JANUS_BATCH_DEFAULT_MODEL, else
`janus.caption.<slug>` and `janus.generate.<slug>`, `janus_batch.queue.chunk_queue`), so one
command line starts a worker of any model (one process per model per GPU).

A worker that serves only `-Q janus.control` loads no model. CPU
works too (JANUS_BATCH_DEVICE=cpu). All settings are `JANUS_BATCH_*` variables; with
JANUS_BATCH_METRICS_PORT=9100 each worker process serves Prometheus metrics there (the
objects of `worker.metrics`, served from the process that runs the tasks).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from janus_batch.db import dispose_engines
from janus_batch.queue import CHUNK_QUEUES, chunk_queue, get_celery, is_chunk_queue
from janus_batch.settings import Settings, get_settings
from janus_batch.states import JobKind
from worker import metrics, runtime
from worker.context import current_context, storage_down_since
from worker.presence import Presence

log = logging.getLogger(__name__)

_needs_model = True


def consumes_model_queues(queue_names: Any) -> bool:
    """Whether a worker consuming `queue_names` (None: all queues) runs the model."""
    return not queue_names or any(is_chunk_queue(name) for name in queue_names)


def own_queues(settings: Settings) -> dict[str, str]:
    """{plain kind queue: this worker's queue of that kind} for the model it serves."""
    model, default = settings.resolved_model_name(), settings.resolved_default_model()
    return {CHUNK_QUEUES[kind]: chunk_queue(kind, model, default) for kind in JobKind}


def serve_own_queues(queues: Any, settings: Settings) -> list[str]:
    """Where the worker would consume a plain kind queue (`-Q janus.caption`, or no -Q),
    consume its model's queue of that kind instead (`app.amqp.queues`, before the consumer
    starts). Returns the names consumed."""
    for plain, own in own_queues(settings).items():
        if own != plain and plain in queues.consume_from:
            queues.deselect(plain)
            queues.select_add(own)
    return sorted(queues.consume_from)


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
    settings = get_settings()
    consume_from = serve_own_queues(sender.app.amqp.queues, settings)
    _needs_model = consumes_model_queues(consume_from)
    if _needs_model:
        log.info(
            "serving model %s (%s) from queues %s",
            settings.resolved_model_name(),
            settings.model,
            ", ".join(consume_from),
        )
    from celery.concurrency import get_implementation
    from celery.concurrency.thread import TaskPool

    _threads_pool = get_implementation(sender.pool_cls) is TaskPool


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """Announce the worker and its queues (`janus_batch.fleet`); a threads-pool worker runs
    its tasks in this process: set it up here, once logging is configured (a chunk task
    waits for the model before it claims anything)."""
    global _presence
    settings = get_settings()
    queues = [q.name for q in sender.task_consumer.queues] if sender is not None else []
    _presence = Presence(
        settings,
        sender.hostname,
        queues,
        storage_down_since=storage_down_since,
        model=settings.resolved_model_name() if _needs_model else None,
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
        log.info(
            "loading model %s (%s) on %s",
            settings.resolved_model_name(),
            settings.model,
            settings.device,
        )
        current_context().pipeline()
    else:
        log.info("control-only worker: no model loaded")


app = get_celery()

import worker.tasks  # noqa: E402, F401  (registers the tasks on the app, which must exist first)
