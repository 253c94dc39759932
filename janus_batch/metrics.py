"""Prometheus metrics of worker processes, on prometheus_client's default registry.

A worker imports these objects and records into them; `start_worker_metrics_server(port)`
serves them (with the process and GC metrics) at `http://<host>:<port>/metrics`. Workers run
`-P solo`, one process per GPU, so each process serves its own port and prometheus_client's
multiprocess mode is not needed: give each worker process its own `JANUS_BATCH_METRICS_PORT`
and scrape every port. (Do not use these from a forking pool: each child would count alone.)

    ITEMS_PROCESSED.labels("generate", "succeeded").inc(len(done))
    observe_batch("generate", rows=12, max_rows=16, model_seconds=3.2)
    with FETCH_SECONDS.time(): ...
    QUEUE_DEPTH.labels("janus.caption").set(n)          # the sweeper, from LLEN

The model runtime (`janus/`) never imports this: the worker times the calls it makes.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

ITEMS_PROCESSED = Counter(
    "janus_worker_items_processed",
    "Items a worker finished, by kind and outcome (succeeded, failed, cancelled, retried).",
    ["kind", "outcome"],
)
BATCH_SIZE = Histogram(
    "janus_worker_batch_size",
    "Requests (captions, or images to generate) in one engine micro-batch.",
    ["kind"],
    buckets=_SIZES,
)
BATCH_FILL = Histogram(
    "janus_worker_batch_fill_ratio",
    "Rows a micro-batch used over the rows it may use (JANUS_BATCH_BATCH_ROWS).",
    ["kind"],
    buckets=_RATIOS,
)
MODEL_SECONDS = Histogram(
    "janus_worker_model_seconds",
    "Seconds the model spent on one micro-batch (the engine call alone).",
    ["kind"],
    buckets=_SECONDS,
)
FETCH_SECONDS = Histogram(
    "janus_worker_fetch_seconds",
    "Seconds to fetch one chunk's inputs (caption images).",
    buckets=_SECONDS,
)
UPLOAD_SECONDS = Histogram(
    "janus_worker_upload_seconds",
    "Seconds to encode and upload one micro-batch's generated images.",
    buckets=_SECONDS,
)
QUEUE_DEPTH = Gauge(
    "janus_queue_depth",
    "Messages waiting in a Celery queue (LLEN), as last seen by the sweeper.",
    ["queue"],
)


def observe_batch(kind: str, *, rows: int, max_rows: int, size: int, model_seconds: float) -> None:
    """Record one micro-batch: its size (requests), fill ratio and model time."""
    BATCH_SIZE.labels(kind).observe(size)
    BATCH_FILL.labels(kind).observe(min(1.0, rows / max_rows) if max_rows > 0 else 0.0)
    MODEL_SECONDS.labels(kind).observe(model_seconds)


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
