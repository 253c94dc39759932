"""Faults for real, kept short: the API SIGKILLed inside the insert of a large submit, and the
S3 server cut (behind a TCP proxy) for longer than every quick retry while a real worker runs
a caption and a generate job."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from janus_batch.db import session_scope
from janus_batch.migrate import upgrade
from janus_batch.models import Item, Job
from janus_batch.ops.stack import Child, Stack, api_command, free_port, wait_http
from tests import services
from tests.e2e.helpers import get_json, post_job, s3_keys, valid_inputs, wait_final
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.s3 import S3Env

BIG = 10_000
GENERATED = 24


def _counts(pg_url: str) -> list[tuple[int, int | None]]:
    """(total, items stored) of every job."""
    with session_scope(pg_url) as session:
        jobs = session.scalars(select(Job)).all()
        return [
            (
                job.total,
                session.scalar(select(func.count()).select_from(Item).where(Item.job_id == job.id)),
            )
            for job in jobs
        ]


def test_api_killed_inside_a_large_submit_leaves_the_whole_job_or_nothing(
    pg_url: str,
    redis_url: str,
    queue_prefix: str,
    tmp_path: Path,
    processes: Callable[[str, list[str], dict[str, str]], Child],
) -> None:
    upgrade(pg_url)
    env = services.process_env(
        tmp_path, database_url=pg_url, redis_url=redis_url, queue_prefix=queue_prefix
    )
    body = {"kind": "generate", "items": [f"a lighthouse, variant {i}" for i in range(BIG)]}
    headers = {"Idempotency-Key": "big-submit-1"}

    def start_api(name: str) -> tuple[str, Child]:
        port = free_port()
        child = processes(name, api_command(port), env)
        wait_http(f"http://127.0.0.1:{port}/healthz", child)
        return f"http://127.0.0.1:{port}", child

    first, api = start_api("api")
    answered: list[int] = []

    def submit() -> None:
        try:
            answered.append(httpx.post(f"{first}/v1/jobs", json=body, headers=headers,
                                       timeout=60).status_code)  # fmt: skip
        except httpx.HTTPError:
            answered.append(0)

    sender = threading.Thread(target=submit)
    sender.start()
    assert services.wait_inserting_items(pg_url), "the API never inserted the items"
    os.kill(api.proc.pid, signal.SIGKILL)
    sender.join(30)
    assert answered == [0]  # the client saw the connection die, not an answer
    time.sleep(0.5)  # PostgreSQL notices the dead backend and rolls its transaction back
    assert _counts(pg_url) == []  # nothing half: the job row went with its items

    second, _ = start_api("api-restarted")
    again = httpx.post(f"{second}/v1/jobs", json=body, headers=headers, timeout=60)
    assert again.status_code == 202, again.text
    assert again.json()["counts"]["total"] == BIG
    assert _counts(pg_url) == [(BIG, BIG)]  # exactly one whole job


@pytest.fixture
def database_url(pg_url: str) -> str:
    """These fault tests run on PostgreSQL only (the SQLite path is the same code, and each
    run costs seconds of real processes)."""
    upgrade(pg_url)
    return pg_url


@pytest.fixture
def s3_proxy(s3_env: S3Env) -> Iterator[TcpProxy]:
    """A cuttable TCP proxy in front of the S3 server."""
    with TcpProxy(int(s3_env.endpoint_url.rsplit(":", 1)[1])) as proxy:
        yield proxy


def test_storage_cut_mid_job_fails_nothing(
    s3_stack_env: dict[str, str],
    s3_env: S3Env,
    input_bucket: str,
    s3_proxy: TcpProxy,
    start_stack: Callable[..., Stack],
) -> None:
    """Inputs and results both on S3; the S3 server becomes unreachable for longer than every
    quick retry while a caption and a generate job run on a real worker: no item fails, every
    output is there, and both jobs finish once storage is back."""
    s3 = s3_env.client()
    images = list(valid_inputs().values())
    uris = []
    for i in range(24):
        s3.put_object(Bucket=input_bucket, Key=f"in/{i}.png", Body=images[i % len(images)])
        uris.append(f"s3://{input_bucket}/in/{i}.png")
    env = {
        **s3_stack_env,
        "JANUS_BATCH_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_proxy.port}",
        "JANUS_BATCH_CHUNK_SIZE": "4",
        "JANUS_BATCH_SWEEP_INTERVAL": "2",
    }
    stack = start_stack(env)
    with httpx.Client(base_url=stack.api_url, timeout=30) as http:
        caption = post_job(
            http, {"kind": "caption", "params": {"max_new_tokens": 4}, "items": uris}
        )
        generate = post_job(
            http, {"kind": "generate", "items": [f"prompt {i}" for i in range(GENERATED)]}
        )
        _wait_some_done(http, [caption["id"], generate["id"]], stack)
        s3_proxy.cut()
        time.sleep(6)  # > every quick retry (JANUS_BATCH_MAX_RETRIES=1: ~0.5 s)
        during = [get_json(http, f"/v1/jobs/{j['id']}") for j in (caption, generate)]
        s3_proxy.restore()
        caption = wait_final(http, caption["id"], stack.children, timeout=120)
        generate = wait_final(http, generate["id"], stack.children, timeout=120)

    assert [j["counts"]["failed"] for j in during] == [0, 0]
    for job in during:  # each job says what it waits for (its worker's storage), no ETA
        assert job["status"] == "running" and job["eta_seconds"] is None, job
        assert "storage unreachable" in job["waiting"]["reason"] or job["waiting"][
            "reason"
        ].startswith("waiting: "), job
    for job, n in ((caption, 24), (generate, GENERATED)):
        assert (job["status"], job["counts"]["succeeded"], job["counts"]["failed"]) == (
            "succeeded", n, 0
        )  # fmt: skip
    bucket = s3_env.bucket
    images_stored = s3_keys(s3, bucket, f"jobs/jobs/{generate['id']}/images/")
    assert len(images_stored) == GENERATED
    assert s3_keys(s3, bucket, f"jobs/jobs/{caption['id']}/results.jsonl")


def _wait_some_done(http: httpx.Client, job_ids: list[str], stack: Stack) -> None:
    """Until some item is done while both jobs still run (the outage then starts mid-job)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = [get_json(http, f"/v1/jobs/{j}") for j in job_ids]
        if any(j["counts"]["succeeded"] for j in jobs):
            assert all(j["status"] in ("queued", "running") for j in jobs), jobs
            return
        assert stack.exited() is None, stack.exited()
        time.sleep(0.1)
    raise AssertionError("no item finished")
