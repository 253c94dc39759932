"""Prometheus metrics of a worker process, served on `JANUS_BATCH_METRICS_PORT` when set.

One port per process: with `-P solo` (one process per GPU) that is the worker itself. The
job table stays the record; these are for dashboards (throughput, micro-batch latency).
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

ITEMS = Counter(
    "janus_worker_items", "Items this process moved to a final state.", ["kind", "status"]
)
CHUNK_SECONDS = Histogram(
    "janus_worker_chunk_seconds",
    "Wall time of one chunk message, claim to last record.",
    ["kind"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
BATCH_SECONDS = Histogram(
    "janus_worker_batch_seconds",
    "Wall time of one micro-batch: the engine call plus encoding and uploads.",
    ["kind"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def serve(port: int) -> bool:
    """Serve /metrics on `port`; False (logged) if the port is taken."""
    try:
        start_http_server(port)
    except OSError as exc:
        log.warning("metrics not served on port %d: %s", port, exc)
        return False
    log.info("metrics served on port %d", port)
    return True
