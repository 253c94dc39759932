"""Prometheus metrics of the API, served at `GET /metrics`: open unless `metrics_token` is set
(then only to `Authorization: Bearer <token>`), so keep it internal or set the token. No family
has a per-tenant label (key, owner, job): an open /metrics shows totals, never who submitted.

Each app gets its own `CollectorRegistry` (made by `install(app)` in `create_app`), so two apps
in one process (tests) never share or collide. Families:
- `janus_jobs{kind,status}`: jobs by state, and `janus_job_items_outstanding{kind}`: items
  not final yet in unfinished jobs, from one GROUP BY on the jobs table per scrape;
- `janus_api_jobs_submitted_total{kind}`, `janus_api_items_submitted_total{kind}` (inline
  items; a source's items are counted when a worker expands it);
- `janus_api_uploads_total{purpose,outcome}`, `janus_api_upload_bytes_total{purpose}`;
- `janus_api_request_seconds{method,route,status}`: latency by route template.
With several API processes (`uvicorn --workers N`) each process counts its own requests:
run one process per port and scrape each.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import HttpError
from janus_batch.db import session_scope
from janus_batch.models import Job
from janus_batch.settings import get_settings
from janus_batch.states import JOB_FINAL, JobKind, JobStatus

log = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"])

UNMATCHED = "<unmatched>"
"""The route label of a request no route matched (keeps the label set small)."""


class JobsCollector(Collector):
    """Jobs by kind and status, read with one GROUP BY when Prometheus scrapes."""

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("janus_jobs", "Jobs by kind and status.", labels=["kind", "status"]),
            GaugeMetricFamily(
                "janus_job_items_outstanding",
                "Items not yet final in jobs that are not final.",
                labels=["kind"],
            ),
            GaugeMetricFamily(
                "janus_jobs_scrape_ok", "1 if the job table answered this scrape, else 0."
            ),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs, outstanding, ok = self._families()
        by_key = {(k.value, s.value): 0 for k in JobKind for s in JobStatus}
        left = {k.value: 0 for k in JobKind}
        try:
            for kind, status, n, remaining in self._query():
                by_key[(kind, status)] = n
                if status not in JOB_FINAL:
                    left[kind] = left.get(kind, 0) + int(remaining or 0)
        except Exception as exc:
            log.warning("metrics: cannot count jobs: %s", str(exc).splitlines()[0])
            ok.add_metric([], 0)
            yield ok
            return
        for (kind, status), n in sorted(by_key.items()):
            jobs.add_metric([kind, status], n)
        for kind, n in sorted(left.items()):
            outstanding.add_metric([kind], max(0, n))
        ok.add_metric([], 1)
        yield from (jobs, outstanding, ok)

    @staticmethod
    def _query() -> list[tuple[str, str, int, int | None]]:
        remaining = Job.total - Job.done
        query = select(Job.kind, Job.status, func.count(), func.sum(remaining)).group_by(
            Job.kind, Job.status
        )
        with session_scope(get_settings().resolved_database_url()) as session:
            return [tuple(row) for row in session.execute(query)]  # type: ignore[misc]


@dataclass
class ApiMetrics:
    """The API's metric objects, all on one registry."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        reg = self.registry
        self.jobs_submitted = Counter(
            "janus_api_jobs_submitted", "Jobs created through the API.", ["kind"], registry=reg
        )
        self.items_submitted = Counter(
            "janus_api_items_submitted",
            "Inline items submitted with new jobs.",
            ["kind"],
            registry=reg,
        )
        self.uploads = Counter(
            "janus_api_uploads",
            "Files uploaded (outcome: created or duplicate).",
            ["purpose", "outcome"],
            registry=reg,
        )
        self.upload_bytes = Counter(
            "janus_api_upload_bytes", "Bytes received in uploads.", ["purpose"], registry=reg
        )
        self.request_seconds = Histogram(
            "janus_api_request_seconds",
            "Request latency by method, route template and status.",
            ["method", "route", "status"],
            registry=reg,
        )
        reg.register(JobsCollector())
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)


class MetricsMiddleware:
    """Times every HTTP request; the route label is the matched route's template."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path_format", None) or UNMATCHED
            self.metrics.request_seconds.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - start
            )


def install(app: FastAPI) -> ApiMetrics:
    """Give `app` its own registry and the timing middleware; `/metrics` serves them."""
    metrics = ApiMetrics()
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics


def get_metrics(request: Request) -> ApiMetrics | None:
    """The app's metrics, or None for an app built without `install` (nothing is counted)."""
    return getattr(request.app.state, "metrics", None)


MetricsDep = Annotated[ApiMetrics | None, Depends(get_metrics)]


def check_scraper(authorization: Annotated[str | None, Header()] = None) -> None:
    """With `metrics_token` set, only `Authorization: Bearer <token>` may read /metrics."""
    token = get_settings().metrics_token
    if not token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise HttpError(
            401,
            "/metrics needs 'Authorization: Bearer <JANUS_BATCH_METRICS_TOKEN>'",
            "Authorization",
            {"WWW-Authenticate": "Bearer"},
        )


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(check_scraper)])
def metrics_endpoint(metrics: MetricsDep) -> Response:
    """Prometheus text exposition of this app's registry (open unless a token is set)."""
    if metrics is None:
        return Response("metrics are not installed\n", status_code=404, media_type="text/plain")
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
