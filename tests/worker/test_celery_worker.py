"""A real `celery worker` process on the tiny checkpoint, and one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from janus_batch.db import session_scope
from janus_batch.models import Item, Job, utcnow
from janus_batch.states import JOB_FINAL, ItemStatus, JobKind, JobStatus
from tests import services
from tests.services import free_port
from tests.worker.helpers import create_job, get_items, get_job, png_bytes, read_jsonl
from worker.sweeper import sweep

ROOT = Path(__file__).resolve().parents[2]
QUEUES = "janus.caption,janus.generate,janus.control"
WINDOW = timedelta(minutes=30)


class WorkerProcess:
    """A `celery -A worker.app worker -P threads -c 4` subprocess (the documented GPU worker,
    here serving the control queue too) logging to a file."""

    def __init__(self, log_path: Path, queues: str = QUEUES, **extra_env: str) -> None:
        self.log_path = log_path
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra_env}
        command = [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "threads",
            "-c", "4", "-Q", queues, "-E", "--loglevel", "INFO",
            "-n", f"test-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes; every one is stopped (or killed) afterwards."""
    workers: list[WorkerProcess] = []

    def start(queues: str = QUEUES, **extra_env: str) -> WorkerProcess:
        worker = WorkerProcess(tmp_path / f"worker-{len(workers)}.log", queues, **extra_env)
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.stop()


def wait_for(condition: Callable[[], Any], timeout: float, what: str, workers: list[Any]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for worker in workers:
            if worker.process.poll() is not None and worker.process.returncode != -9:
                raise AssertionError(f"worker exited early:\n{worker.log()[-4000:]}")
        time.sleep(0.02)
    logs = "\n".join(w.log()[-4000:] for w in workers)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def job_final(ctx: Any, job_id: str) -> bool:
    return get_job(ctx, job_id).status in JOB_FINAL


def test_real_worker_processes_jobs(ctx: Any, s3_env: Any, start_worker: Any) -> None:
    client = s3_env.client()
    client.put_object(Bucket=s3_env.bucket, Key="in/a.png", Body=png_bytes())
    captions = create_job(
        ctx, JobKind.CAPTION,
        [f"s3://{s3_env.bucket}/in/a.png", f"s3://{s3_env.bucket}/in/missing.png"],
        params={"max_new_tokens": 4},
    )  # fmt: skip
    images = create_job(ctx, JobKind.GENERATE, [{"prompt": f"p{i}", "n": 2} for i in range(10)])
    late = create_job(ctx, JobKind.GENERATE, ["too late", "also too late"])
    with session_scope(ctx.database_url) as session:  # its completion window is over
        over = utcnow() - timedelta(seconds=1)
        session.execute(
            update(Job).where(Job.id == late).values(expires_at=over, created_at=over - WINDOW)
        )
    port = free_port()
    worker = start_worker(JANUS_BATCH_METRICS_PORT=str(port))
    control = start_worker("janus.control")  # a CPU-only worker for expand/finalize/sweep

    for job_id in (captions, images, late):
        wait_for(lambda j=job_id: job_final(ctx, j), 120, f"{job_id} to finish", [worker, control])
    job = get_job(ctx, captions)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 1, 1)
    job = get_job(ctx, images)
    assert (job.status, job.succeeded, job.total) == (JobStatus.SUCCEEDED, 10, 10)
    results = read_jsonl(ctx.storage.get_bytes(f"jobs/{images}/results.jsonl"))
    assert len(results) == 10
    for line in results:
        for image in line["images"]:
            assert ctx.storage.exists(image["key"])
    # the chunk of the job past its deadline ran nothing: its items expired, it ended expired
    job = get_job(ctx, late)
    assert (job.status, job.expired, job.succeeded, job.failed) == (JobStatus.EXPIRED, 2, 0, 0)
    errors = read_jsonl(ctx.storage.get_bytes(f"jobs/{late}/errors.jsonl"))
    assert [e["status"] for e in errors] == ["expired"] * 2
    prefix = "expired: not finished within the job's completion window (30m, ended "
    assert all(e["error"].startswith(prefix) for e in errors), errors
    log = worker.log()
    assert f"job={late} past its deadline: expiring, 2 pending items expired" in log
    assert f"job={images}" in log and "model" in log and "loaded" in log
    assert "control-only worker: no model loaded" in control.log()

    # the worker process served its own metrics on JANUS_BATCH_METRICS_PORT
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def processed(kind: str, outcome: str) -> float:
        labels = frozenset({("kind", kind), ("outcome", outcome)})
        return samples.get(("janus_worker_items_processed_total", labels), 0.0)

    assert processed("caption", "succeeded") == 1 and processed("caption", "failed") == 1
    assert processed("generate", "succeeded") == 10
    assert processed("generate", "expired") == 2
    assert samples[("janus_worker_chunk_seconds_count", frozenset({("kind", "generate")}))] == 2
    assert samples[("janus_worker_fetch_seconds_count", frozenset())] == 1
    assert samples[("janus_worker_upload_seconds_count", frozenset())] >= 1


def test_sigkill_mid_chunk_loses_nothing(make_ctx: Any, start_worker: Any) -> None:
    ctx = make_ctx(lease_seconds="10", stale_pending_seconds="2")
    prompts = [{"prompt": f"prompt number {i}", "n": 2, "seed": i} for i in range(32)]
    job_id = create_job(ctx, JobKind.GENERATE, prompts)
    first = start_worker()

    def running() -> list[int]:
        with session_scope(ctx.database_url) as session:
            return session.scalars(
                select(Item.id).where(Item.job_id == job_id, Item.status == ItemStatus.RUNNING)
            ).all()

    held = wait_for(running, 120, "an item to be running", [first])
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait(timeout=10)
    assert not job_final(ctx, job_id)

    second = start_worker()
    time.sleep(ctx.settings.lease_seconds + 0.5)  # let the dead worker's lease run out
    swept = sweep(ctx)
    assert swept["requeued_leases"] >= 1, swept
    # messages the dead worker had reserved but not claimed come back as lost messages
    deadline = time.monotonic() + 180
    while not job_final(ctx, job_id):
        assert time.monotonic() < deadline, second.log()[-4000:]
        sweep(ctx)
        time.sleep(1)

    job = get_job(ctx, job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert (job.total, job.succeeded, job.failed, job.cancelled) == (32, 32, 0, 0)
    rows = get_items(ctx, job_id)
    assert {r.status for r in rows} == {ItemStatus.SUCCEEDED}
    assert max(r.attempts for r in rows if r.id in held) == 2
    with session_scope(ctx.database_url) as session:
        done = session.scalar(
            select(func.count()).where(Item.job_id == job_id, Item.status == "succeeded")
        )
    assert done == job.succeeded == job.total
    results = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl"))
    assert [line["idx"] for line in results] == list(range(32))
    keys = list(ctx.storage.iter_keys(f"jobs/{job_id}/images/"))
    assert len(keys) == 32 * 2  # retries overwrote, never duplicated


def test_sigkill_with_two_jobs_in_flight_then_a_broker_restart_loses_nothing(
    make_ctx: Any, start_worker: Any
) -> None:
    """A worker holding prepared requests and outputs of two jobs is SIGKILLed, then Redis
    loses every message (a restart without persistence): SQL still knows what is left, the
    sweeper hands it out again (expired leases, lost messages, lost windows), and each job
    ends with every item exactly once."""
    ctx = make_ctx(lease_seconds="10", stale_pending_seconds="2")
    jobs = {
        name: create_job(
            ctx,
            JobKind.GENERATE,
            [{"prompt": f"{name} prompt {i}", "n": 2, "seed": i} for i in range(16)],
        )
        for name in ("a", "b")
    }
    first = start_worker()

    def both_running() -> bool:
        with session_scope(ctx.database_url) as session:
            running = session.scalars(
                select(Item.job_id).where(Item.status == ItemStatus.RUNNING).distinct()
            ).all()
        return set(running) == set(jobs.values())

    wait_for(both_running, 120, "items of both jobs to be running", [first])
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait(timeout=10)
    # the broker restarted and kept nothing: queues, unacked messages, everything
    services.delete_prefix(ctx.settings.redis_url, ctx.settings.queue_prefix)

    second = start_worker()
    deadline = time.monotonic() + 240
    while not all(job_final(ctx, j) for j in jobs.values()):
        assert time.monotonic() < deadline, second.log()[-4000:]
        sweep(ctx)
        time.sleep(2)

    for job_id in jobs.values():
        job = get_job(ctx, job_id)
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert (job.total, job.succeeded, job.failed, job.cancelled) == (16, 16, 0, 0)
        rows = get_items(ctx, job_id)
        assert {r.status for r in rows} == {ItemStatus.SUCCEEDED}
        results = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl"))
        assert [line["idx"] for line in results] == list(range(16))
        assert len(list(ctx.storage.iter_keys(f"jobs/{job_id}/images/"))) == 16 * 2
