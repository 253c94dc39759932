"""Prometheus metrics: the API's /metrics (jobs by status from SQL, submissions, uploads,
request latency by route template) and the worker metric objects served on their own port."""

from __future__ import annotations

import httpx
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from janus_batch.ops.stack import free_port
from tests.api.helpers import caption_job, finish_items
from worker import metrics as worker_metrics


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of a text exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def get_metrics(client: TestClient) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return scrape(response.text)


def test_metrics_follow_jobs_uploads_and_requests(client, database_url):
    before = get_metrics(client)
    assert value(before, "janus_jobs_scrape_ok") == 1
    assert ("janus_jobs", frozenset({("kind", "caption"), ("status", "queued")})) in before
    assert value(before, "janus_jobs", kind="caption", status="queued") == 0

    job = caption_job(client, n=3)
    client.get(f"/v1/jobs/{job['id']}")
    client.get("/v1/no-such-route")
    data = b"\x89PNG fake image bytes"
    for _ in range(2):
        client.post("/v1/files", files={"file": ("a.png", data)}, data={"purpose": "image"})

    after = get_metrics(client)
    assert value(after, "janus_api_jobs_submitted_total", kind="caption") == 1
    assert value(after, "janus_api_items_submitted_total", kind="caption") == 3
    assert value(after, "janus_jobs", kind="caption", status="queued") == 1
    assert value(after, "janus_job_items_outstanding", kind="caption") == 3
    assert value(after, "janus_api_uploads_total", purpose="image", outcome="created") == 1
    assert value(after, "janus_api_uploads_total", purpose="image", outcome="duplicate") == 1
    assert value(after, "janus_api_upload_bytes_total", purpose="image") == 2 * len(data)
    seconds = "janus_api_request_seconds_count"
    assert value(after, seconds, method="POST", route="/v1/jobs", status="202") == 1
    assert value(after, seconds, method="GET", route="/v1/jobs/{job_id}", status="200") == 1
    assert value(after, seconds, method="GET", route="<unmatched>", status="404") == 1
    assert value(after, seconds, method="GET", route="/metrics", status="200") == 1  # the 1st
    assert any(name == "process_cpu_seconds_total" for name, _ in after)

    finish_items(database_url, job["id"], [0, 1])  # the worker's part: 2 done, job running
    later = get_metrics(client)
    assert value(later, "janus_jobs", kind="caption", status="queued") == 0
    assert value(later, "janus_jobs", kind="caption", status="running") == 1
    assert value(later, "janus_job_items_outstanding", kind="caption") == 1


def test_each_app_has_its_own_registry(client):
    caption_job(client, n=2)
    with TestClient(create_app()) as other:
        fresh = get_metrics(other)
    assert value(fresh, "janus_api_items_submitted_total", kind="caption") == 0
    assert value(get_metrics(client), "janus_api_items_submitted_total", kind="caption") == 2


def test_metrics_need_no_key_and_survive_a_database_outage(client, set_env):
    set_env(auth_mode="keys")
    assert client.get("/v1/jobs").status_code == 401
    assert value(get_metrics(client), "janus_jobs_scrape_ok") == 1
    set_env(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    down = get_metrics(client)
    assert value(down, "janus_jobs_scrape_ok") == 0
    assert not any(name == "janus_jobs" for name, _ in down)


def test_worker_metrics_are_served_on_their_own_port(redis_url, queue_prefix):
    items = worker_metrics.ITEMS_PROCESSED.labels("generate", "succeeded")
    start = items._value.get()
    items.inc(5)
    worker_metrics.observe_batch("generate", size=6, model_seconds=2.5)
    worker_metrics.PassRecorder(16)("generate", 6, 12)  # the engine's on_pass hook
    worker_metrics.CHUNK_SECONDS.labels("generate").observe(4.0)
    with worker_metrics.FETCH_SECONDS.time():
        pass
    worker_metrics.UPLOAD_SECONDS.observe(0.3)
    conn = redis.Redis.from_url(redis_url)
    conn.rpush(queue_prefix + "janus.caption", b"a", b"b", b"c")
    depths = worker_metrics.record_queue_depths(
        conn, ["janus.caption", "janus.generate"], queue_prefix
    )
    conn.close()
    assert depths == {"janus.caption": 3, "janus.generate": 0}

    port = free_port()
    server, thread = worker_metrics.start_worker_metrics_server(port, addr="127.0.0.1")
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert response.status_code == 200
    samples = scrape(response.text)
    total = "janus_worker_items_processed_total"
    assert value(samples, total, kind="generate", outcome="succeeded") == start + 5
    assert value(samples, "janus_worker_batch_size_count", kind="generate") >= 1
    assert value(samples, "janus_worker_chunk_seconds_count", kind="generate") >= 1
    assert value(samples, "janus_worker_batch_fill_ratio_bucket", kind="generate", le="0.7") < (
        value(samples, "janus_worker_batch_fill_ratio_bucket", kind="generate", le="0.8")
    )  # 12/16 = 0.75 falls in (0.7, 0.8]
    assert value(samples, "janus_worker_model_seconds_sum", kind="generate") >= 2.5
    assert value(samples, "janus_worker_fetch_seconds_count") >= 1
    assert value(samples, "janus_worker_upload_seconds_count") >= 1
    assert value(samples, "janus_queue_depth", queue="janus.caption") == 3
    families = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "janus_worker_items_processed", "janus_worker_chunk_seconds", "janus_worker_batch_size",
        "janus_worker_batch_fill_ratio", "janus_worker_model_seconds", "janus_worker_fetch_seconds",
        "janus_worker_upload_seconds", "janus_queue_depth", "process_cpu_seconds",
    } <= families  # fmt: skip
