"""The machinery of bench/pipeline.py: throwaway services, the real API and worker processes
on the simulated engine, HTTP calls, worker metrics, and the limits measured beside them.

Everything here is bounded (every wait has a timeout) and undone by `Deployment.close()` /
`S3.close()`: processes terminated, the PostgreSQL database dropped, the Redis key prefix
deleted, moto stopped.
"""

from __future__ import annotations

import io
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from janus_batch.db import dispose_engines, session_scope
from janus_batch.migrate import upgrade
from janus_batch.models import Item
from janus_batch.ops import stack
from janus_batch.s3client import make_s3_client
from tests import services
from tests.fixtures.s3 import REGION, MotoServer, start_moto

ROOT = Path(__file__).resolve().parents[1]
INPUT_BUCKET = "bench-inputs"
RESULT_BUCKET = "bench-results"
CAPTION_PROMPT = "Describe this image in one sentence."
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ENGINE_READY = "simulated engine ready"
METRICS = ("janus_engine_busy_seconds", "janus_engine_passes", "janus_engine_rows")
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def set_aws_env() -> None:
    """Test credentials for this process and its children; nothing pointing boto3 elsewhere."""
    os.environ.update(AWS_ENV)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)


def parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- inputs ----------------------------------------------------------------------------------


class Photos:
    """Small distinct JPEGs (320x240, ~15 KB): one smooth noisy picture, each copy with its
    index drawn in a corner, so the bytes (and the API's file ids) all differ."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        rng = np.random.default_rng(1)
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack(
            [128 + 90 * np.sin(x / 37 + c) * np.cos(y / 29 - c) for c in range(3)], axis=-1
        )
        base += rng.normal(0, 8, size=base.shape)
        self.base = np.clip(base, 0, 255).astype(np.uint8)

    def jpeg(self, i: int) -> bytes:
        pixels = self.base.copy()
        bits = np.array([(i >> b) & 1 for b in range(24)], dtype=np.uint8) * 255
        pixels[:8, : 24 * 8] = np.repeat(bits, 8)[None, :, None]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
        return buffer.getvalue()


def small_job_sizes(jobs: int, items: int, seed: int = 7) -> list[int]:
    """`jobs` sizes of 1-3 summing to `items` (deterministic)."""
    if not jobs <= items <= 3 * jobs:
        raise ValueError(f"{items} items do not fit {jobs} jobs of 1-3")
    rng = random.Random(seed)
    sizes = [1] * jobs
    while sum(sizes) < items:
        i = rng.randrange(jobs)
        if sizes[i] < 3:
            sizes[i] += 1
    return sizes


# --- S3 (moto) -------------------------------------------------------------------------------


class S3:
    """A moto server with an input bucket (images) and a result bucket (the storage)."""

    def __init__(self) -> None:
        self.server: MotoServer = start_moto()
        self.endpoint = self.server.endpoint_url
        self.client = make_s3_client(self.endpoint, REGION, max_pool_connections=32)
        for bucket in (INPUT_BUCKET, RESULT_BUCKET):
            self.client.create_bucket(Bucket=bucket)
        self.image_keys: list[str] = []

    def upload_images(self, photos: Photos, count: int, prefix: str = "imgs/") -> list[str]:
        """`count` JPEGs under s3://bench-inputs/<prefix>; returns their s3:// URIs."""
        keys = [f"{prefix}{i:06d}.jpg" for i in range(count)]

        def put(i: int) -> None:
            self.client.put_object(Bucket=INPUT_BUCKET, Key=keys[i], Body=photos.jpeg(i))

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(count)))
        self.image_keys = keys
        return [f"s3://{INPUT_BUCKET}/{key}" for key in keys]

    def get_rate(self, keys: Sequence[str], concurrency: int) -> float:
        """GETs/s of the server for these input objects, with the worker's fetch concurrency
        (its S3 client, a thread pool of that size), bodies read."""
        client = make_s3_client(self.endpoint, REGION, max_pool_connections=concurrency)

        def get(key: str) -> int:
            return len(client.get_object(Bucket=INPUT_BUCKET, Key=key)["Body"].read())

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(get, keys[: min(len(keys), 50)]))  # warm the connections
            started = time.perf_counter()
            list(pool.map(get, keys))
            seconds = time.perf_counter() - started
        client.close()
        return len(keys) / seconds

    def put_rate(self, body: bytes, count: int, concurrency: int) -> float:
        """PUTs/s of the server for `count` objects of `body`, with the worker's upload
        concurrency (its S3 client, a thread pool of that size)."""
        client = make_s3_client(self.endpoint, REGION, max_pool_connections=concurrency)

        def put(i: int) -> None:
            client.put_object(
                Bucket=RESULT_BUCKET, Key=f"limit/put-{i:06d}.png", Body=body,
                ContentType="image/png",
            )  # fmt: skip

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(put, range(min(count, 20))))
            started = time.perf_counter()
            list(pool.map(put, range(count)))
            seconds = time.perf_counter() - started
        client.close()
        return count / seconds

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.server.stop()
            self.server.log_path.unlink(missing_ok=True)


def png_encode_rate(count: int, threads: int, level: int) -> tuple[float, bytes]:
    """Images/s of PNG-encoding simulated pictures (the worker's encoder and zlib level) with
    `threads` threads, and one encoded PNG (the body for the PUT-rate measurement)."""
    from bench.simulated_engine import IMAGE_TOKENS, simulated_picture
    from worker.encode import encode_image

    image = simulated_picture((0,) * IMAGE_TOKENS)
    metadata = {"prompt": "a red fox in the snow", "seed": 1, "model": "simulated", "index": 0}

    def encode(_: int) -> bytes:
        return encode_image(image, "png", metadata, png_compress_level=level)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(encode, range(threads)))
        started = time.perf_counter()
        out = list(pool.map(encode, range(count)))
        seconds = time.perf_counter() - started
    return count / seconds, out[0]


def prepare_rate(checkpoint: Path, photos: Photos, count: int) -> float:
    """Caption inputs/s that one thread turns into engine units: JPEG decode (with the
    worker's draft scaling) and the real `engine.prepare` (the engine serializes prepare
    behind one lock, so one thread is its rate in a worker process)."""
    import torch

    from janus import CaptionRequest, JanusEngine, hf_adapter

    torch.set_num_threads(1)
    with hf_adapter.quiet_progress_bars():
        engine = JanusEngine.load(str(checkpoint), device="cpu", dtype="float32")
    datas = [photos.jpeg(i) for i in range(count)]

    def one(data: bytes) -> None:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (engine.image_size, engine.image_size))
        image.load()
        engine.prepare(CaptionRequest(image=image, question=CAPTION_PROMPT))

    for data in datas[:5]:
        one(data)
    started = time.perf_counter()
    for data in datas:
        one(data)
    return count / (time.perf_counter() - started)


# --- worker metrics --------------------------------------------------------------------------


@dataclass
class Snapshot:
    """The engine counters of one worker: {(metric, kind): value}."""

    values: dict[tuple[str, str], float] = field(default_factory=dict)

    def total(self, metric: str, kind: str | None = None) -> float:
        return sum(v for (m, k), v in self.values.items() if m == metric and kind in (None, k))

    def __sub__(self, other: Snapshot) -> Snapshot:
        keys = set(self.values) | set(other.values)
        return Snapshot({k: self.values.get(k, 0.0) - other.values.get(k, 0.0) for k in keys})

    @property
    def busy(self) -> float:
        return self.total("janus_engine_busy_seconds")

    @property
    def passes(self) -> int:
        return round(self.total("janus_engine_passes"))

    @property
    def rows(self) -> int:
        return round(self.total("janus_engine_rows"))


def scrape(port: int) -> Snapshot:
    """The janus_engine_* counters a worker serves on 127.0.0.1:`port`."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in METRICS:
            continue
        for sample in family.samples:
            if sample.name == f"{family.name}_total":
                values[(family.name, sample.labels.get("kind", ""))] = sample.value
    return Snapshot(values)


# --- the deployment --------------------------------------------------------------------------


@dataclass
class GpuWorker:
    child: stack.Child
    metrics_port: int

    def snapshot(self) -> Snapshot:
        return scrape(self.metrics_port)


def split_commands() -> bool:
    """Whether the stack builds a GPU worker and a control worker apart (the rework's
    `control_command`); otherwise one solo worker serves every queue."""
    return hasattr(stack, "control_command")


class Deployment:
    """A throwaway deployment: database, Redis prefix, storage, API, control worker, GPU
    workers on the simulated engine. `close()` undoes all of it."""

    def __init__(
        self,
        work_dir: Path,
        *,
        db: str,
        s3: S3 | None,
        checkpoint: Path,
        batch_rows: int,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.log_dir = work_dir / "logs"
        self.s3 = s3
        self.checkpoint = checkpoint
        self.batch_rows = batch_rows
        self.redis_url = services.ensure_redis()
        self.prefix = f"jbbench-{uuid.uuid4().hex[:10]}:"
        self.tag = uuid.uuid4().hex[:6]
        self.pg_name: str | None = None
        self.children: list[stack.Child] = []
        self.gpus: list[GpuWorker] = []
        self.pass_seconds: float | None = None
        self.control: stack.Child | None = None
        self.api: stack.Child | None = None
        self.client: Api | None = None
        self._spawned = 0
        if db == "postgresql":
            self.pg_name, self.database_url = services.create_pg_database()
        else:
            self.database_url = f"sqlite:///{work_dir}/jobs.db"
        if s3 is not None:
            self.storage_url = f"s3://{RESULT_BUCKET}/{self.tag}"
        else:
            self.storage_url = str(work_dir / "results")
        self.settings_env = {
            "JANUS_BATCH_BATCH_ROWS": str(batch_rows),
            "JANUS_BATCH_SWEEP_INTERVAL": "5",
            "JANUS_BATCH_DEVICE": "cpu",
            "JANUS_BATCH_TORCH_THREADS": "1",
            "JANUS_BATCH_ENGINE": "bench.simulated_engine:load_simulated",
            "JANUS_SIM_CHECKPOINT": str(checkpoint),
            **(extra_env or {}),
        }

    # environment and processes

    def env(self, **more: str) -> dict[str, str]:
        env = {
            **os.environ,
            **services.process_env(
                self.work_dir,
                database_url=self.database_url,
                redis_url=self.redis_url,
                queue_prefix=self.prefix,
                storage_url=self.storage_url,
            ),
            **AWS_ENV,
            **self.settings_env,
            **more,
        }
        env.pop("JANUS_BATCH_METRICS_PORT", None)
        if self.s3 is not None:
            env["JANUS_BATCH_S3_ENDPOINT_URL"] = self.s3.endpoint
            env["JANUS_BATCH_S3_REGION"] = REGION
        env.update(more)
        return env

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> stack.Child:
        child = stack.spawn(name, cmd, env, self.log_dir)
        self.children.append(child)
        return child

    def start(self) -> Api:
        """Migrate, then start the API and (with the rework) the control worker."""
        upgrade(self.database_url)
        dispose_engines()
        if split_commands():
            schedule = self.log_dir / f"celerybeat-{self.tag}"
            self.log_dir.mkdir(parents=True, exist_ok=True)
            cmd = stack.control_command(f"control-{self.tag}", beat=True, schedule=schedule)
            self.control = self._spawn(f"control-{self.tag}", cmd, self.env())
        port = stack.free_port()
        self.api = self._spawn(f"api-{self.tag}", stack.api_command(port), self.env())
        url = f"http://127.0.0.1:{port}"
        stack.wait_http(f"{url}/healthz", self.api, timeout=90)
        self.client = Api(url)
        return self.client

    def start_gpu_workers(self, count: int, pass_seconds: float, timeout: float = 180) -> None:
        """Start `count` GPU workers on the simulated engine; wait until each has loaded it
        and Celery is consuming."""
        started: list[GpuWorker] = []
        for _ in range(count):
            self._spawned += 1
            name = f"gpu{self._spawned}-{self.tag}"
            port = stack.free_port()
            env = self.env(
                JANUS_SIM_PASS_SECONDS=repr(float(pass_seconds)),
                JANUS_BATCH_METRICS_PORT=str(port),
            )
            if split_commands():
                cmd = stack.worker_command(name)
            else:  # before the rework: one solo worker serves every queue, the first runs beat
                beat = not any(g.child.proc.poll() is None for g in self.gpus) and not started
                schedule = self.log_dir / f"celerybeat-{name}"
                cmd = stack.worker_command(name, beat=beat, schedule=schedule)
            gpu = GpuWorker(self._spawn(name, cmd, env), port)
            started.append(gpu)
        self.gpus.extend(started)
        self.pass_seconds = pass_seconds
        for gpu in started:
            wait_worker(gpu, timeout)

    def ensure_gpu_workers(self, count: int, pass_seconds: float) -> None:
        """Exactly `count` live GPU workers at `pass_seconds`: kept if they already are,
        the last ones stopped or more added, all restarted for another pass time or
        if one died."""
        alive = [g for g in self.gpus if g.child.proc.poll() is None]
        if len(alive) != len(self.gpus) or self.pass_seconds != pass_seconds:
            self.stop_gpu_workers()
            alive = []
        while len(alive) > count:
            alive.pop().child.stop(timeout=30)
            self.gpus = list(alive)
        if len(alive) < count:
            self.start_gpu_workers(count - len(alive), pass_seconds)

    def stop_gpu_workers(self) -> None:
        for gpu in self.gpus:
            gpu.child.stop(timeout=30)
        self.gpus = []
        self.pass_seconds = None

    def check_alive(self) -> None:
        """RuntimeError (with its log) if the API or a worker died."""
        for child in [self.api, self.control, *(g.child for g in self.gpus)]:
            if child is not None and child.proc.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}"
                )

    def last_item_finish(self, job_id: str) -> datetime | None:
        with session_scope(self.database_url) as session:
            value = session.execute(
                select(func.max(Item.finished_at)).where(Item.job_id == job_id)
            ).scalar()
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def close(self) -> None:
        """Stop every process (in reverse), drop the database, delete the Redis prefix."""
        errors: list[str] = []
        if self.client is not None:
            self.client.close()
        for child in reversed(self.children):
            try:
                child.stop(timeout=30)
            except Exception as exc:  # keep cleaning up
                errors.append(f"{child.name}: {exc}")
        self.children = []
        dispose_engines()
        if self.pg_name:
            try:
                services.drop_pg_database(self.pg_name)
            except Exception as exc:
                errors.append(f"drop {self.pg_name}: {exc}")
            self.pg_name = None
        try:
            services.delete_prefix(self.redis_url, self.prefix)
        except Exception as exc:
            errors.append(f"redis prefix: {exc}")
        if errors:
            log(f"cleanup problems: {errors}")

    def tails(self) -> str:
        return "\n".join(f"--- {c.name} ({c.log}) ---\n{c.tail(25)}" for c in self.children)


def wait_worker(gpu: GpuWorker, timeout: float) -> None:
    """Until the worker logged that its simulated engine is loaded and Celery is ready, and
    its metrics answer."""
    deadline = time.monotonic() + timeout
    child = gpu.child
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
        text = child.log.read_text(errors="replace") if child.log.exists() else ""
        if ENGINE_READY in text and re.search(r"\bready\.", text):
            try:
                gpu.snapshot()
                return
            except httpx.HTTPError:
                pass
        time.sleep(0.25)
    raise RuntimeError(f"{child.name} not ready in {timeout:.0f}s:\n{child.tail()}")


# --- the HTTP API ----------------------------------------------------------------------------


class Api:
    """The few calls the bench makes (thread-safe: one httpx client)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=16))

    def close(self) -> None:
        self.http.close()

    def submit(self, body: dict[str, Any]) -> str:
        response = self.http.post("/v1/jobs", json=body)
        if response.status_code not in (200, 202):
            raise RuntimeError(f"POST /v1/jobs: {response.status_code} {response.text[:500]}")
        return str(response.json()["id"])

    def submit_many(self, bodies: Iterable[dict[str, Any]], threads: int = 8) -> list[str]:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(self.submit, bodies))

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/jobs/{job_id}")
        response.raise_for_status()
        return dict(response.json())

    def cancel(self, job_id: str) -> None:
        response = self.http.post(f"/v1/jobs/{job_id}/cancel")
        if response.status_code not in (200, 202, 409):
            raise RuntimeError(f"cancel {job_id}: {response.status_code} {response.text[:300]}")

    def upload_image(self, data: bytes, name: str) -> str:
        response = self.http.post(
            "/v1/files", data={"purpose": "image"}, files={"file": (name, data, "image/jpeg")}
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"POST /v1/files: {response.status_code} {response.text[:300]}")
        return str(response.json()["id"])

    def wait(
        self,
        job_ids: Sequence[str],
        timeout: float,
        *,
        poll: float = 0.1,
        alive: Callable[[], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Poll until every job is terminal; returns their last views. TimeoutError (with
        their counts) after `timeout` s; `alive()` may raise when a process died."""
        deadline = time.monotonic() + timeout
        left = list(job_ids)
        done: dict[str, dict[str, Any]] = {}
        while left:
            view = self.job(left[0])
            if view["status"] in TERMINAL:
                done[left.pop(0)] = view
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(left)} of {len(job_ids)} jobs not done in {timeout:.0f}s; "
                    f"first: {view['status']} {view['counts']}"
                )
            if alive is not None:
                alive()
            time.sleep(poll)
        return done


def job_seconds(view: dict[str, Any]) -> float:
    """created_at -> finished_at of a finished job (its latency, end to end)."""
    created, finished = parse_time(view["created_at"]), parse_time(view["finished_at"])
    if created is None or finished is None:
        raise RuntimeError(f"job {view['id']} has no finished_at: {view['status']}")
    return (finished - created).total_seconds()


def in_threads(function: Callable[[Any], Any], values: Iterable[Any], threads: int) -> list[Any]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(function, values))
