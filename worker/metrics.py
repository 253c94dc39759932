"""Prometheus metrics of worker processes, on prometheus_client's default registry.

The worker records into these objects; `start_worker_metrics_server(port)` serves them (with
the process and GC metrics) at `http://<host>:<port>/metrics`. Workers run `-P solo`, one
process per GPU, so each process serves its own port and prometheus_client's multiprocess
mode is not needed: give each worker process its own `JANUS_BATCH_METRICS_PORT` and scrape
every port. (Do not use these from a forking pool: each child would count alone.)

    ITEMS_PROCESSED.labels("generate", "succeeded").inc(n)   # rows a chunk moved
    observe_batch("generate", size=6, model_seconds=3.2)       # one engine call
    observe_pass("generate", rows=12, max_rows=16)             # one forward pass (engine hook)
    with FETCH_SECONDS.time(): ...
    record_queue_depths(redis, ["janus.caption"], prefix)      # the sweeper, from LLEN

The job table stays the record; these are for dashboards. The model runtime (`janus/`)
never imports this: the worker times the calls it makes and installs a `PassRecorder` as the
engine's `on_pass` hook.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_CHUNK_SECONDS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

ITEMS_PROCESSED = Counter(
    "janus_worker_items_processed",
    "Items a chunk task moved to a final state (succeeded, failed, cancelled, expired); only "
    "rows the conditional UPDATE actually changed are counted, so a redelivery never counts "
    "twice.",
    ["kind", "outcome"],
)
CHUNK_SECONDS = Histogram(
    "janus_worker_chunk_seconds",
    "Wall time of one chunk message that claimed items, claim to last record.",
    ["kind"],
    buckets=_CHUNK_SECONDS,
)
BATCH_SIZE = Histogram(
    "janus_worker_batch_size",
    "Requests (images to caption, or images to generate) in one forward pass.",
    ["kind"],
    buckets=_SIZES,
)
BATCH_FILL = Histogram(
    "janus_worker_batch_fill_ratio",
    "Rows a forward pass used over the engine's max_batch_rows (JANUS_BATCH_BATCH_ROWS).",
    ["kind"],
    buckets=_RATIOS,
)
MODEL_SECONDS = Histogram(
    "janus_worker_model_seconds",
    "Seconds one forward pass took (with its VQ decodes): no fetch, encode or upload.",
    ["kind"],
    buckets=_SECONDS,
)
FETCH_SECONDS = Histogram(
    "janus_worker_fetch_seconds",
    "Seconds to fetch one caption chunk's input images.",
    buckets=_SECONDS,
)
UPLOAD_SECONDS = Histogram(
    "janus_worker_upload_seconds",
    "Seconds to encode and upload one generated image (in the outtake pool).",
    buckets=_SECONDS,
)
ENGINE_BUSY_SECONDS = Counter(
    "janus_engine_busy_seconds",
    "Seconds the engine thread spent running forward passes and VQ decodes (the GPU busy); "
    "its rate is the model's busy fraction.",
    ["kind"],
)
ENGINE_PASSES = Counter("janus_engine_passes", "Forward passes run by the engine.", ["kind"])
ENGINE_ROWS = Counter(
    "janus_engine_rows",
    "Rows of real requests run in forward passes (over passes x JANUS_BATCH_BATCH_ROWS: the fill).",
    ["kind"],
)
QUEUE_DEPTH = Gauge(
    "janus_queue_depth",
    "Messages waiting in a Celery queue (LLEN), as last seen by the sweeper.",
    ["queue"],
)
STORAGE_UP = Gauge(
    "janus_storage_up",
    "1 while this worker's storage answers, 0 while its circuit breaker holds new work back.",
)
STORAGE_UP.set(1)
ITEMS_DEFERRED = Counter(
    "janus_items_deferred",
    "Items sent back to wait out a transient error (storage or an input host down).",
    ["kind", "why"],
)
SWEEPER_LAST_RUN = Gauge(
    "janus_sweeper_last_run_timestamp_seconds",
    "Unix time of the sweeper's last successful run (in the process that ran it).",
)


def observe_batch(kind: str, *, size: int, model_seconds: float) -> None:
    """Record one engine call: its size (requests) and model time."""
    BATCH_SIZE.labels(kind).observe(size)
    MODEL_SECONDS.labels(kind).observe(model_seconds)


def observe_pass(kind: str, *, rows: int, max_rows: int) -> None:
    """Record one forward pass: the rows real requests used over the rows it runs."""
    BATCH_FILL.labels(kind).observe(min(1.0, rows / max_rows) if max_rows > 0 else 0.0)


class PassRecorder:
    """An engine `on_pass(kind, units, rows)` hook that records each pass's fill, then calls
    the hook it replaced (if any)."""

    def __init__(self, max_rows: int, then: Callable[[str, int, int], None] | None = None):
        self.max_rows = max_rows
        self.then = then

    def __call__(self, kind: str, units: int, rows: int) -> None:
        observe_pass(kind, rows=rows, max_rows=self.max_rows)
        if self.then is not None:
            self.then(kind, units, rows)


def record_queue_depths(redis_client: Any, queues: list[str], prefix: str = "") -> dict[str, int]:
    """Set QUEUE_DEPTH from LLEN of each queue (under the deployment's key prefix)."""
    depths = {queue: int(redis_client.llen(prefix + queue)) for queue in queues}
    for queue, depth in depths.items():
        QUEUE_DEPTH.labels(queue).set(depth)
    return depths


def start_worker_metrics_server(port: int, addr: str = "0.0.0.0") -> tuple[Any, threading.Thread]:
    """Serve the default registry on `addr:port` from a daemon thread; returns (server, thread)
    so a caller (a test) can `server.shutdown()`. OSError if the port is taken."""
    server, thread = start_http_server(port, addr=addr)
    log.info("worker metrics served on http://%s:%d/metrics", addr, port)
    return server, thread
