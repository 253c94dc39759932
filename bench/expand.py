"""Benchmark of dataset-scale source expansion (worker.expand.expand_source), end to end.

    PYTHONPATH=. python bench/expand.py [--lines 100000] [--small 10000] [--s3-keys 20000]
        [--csv-rows 1000000] [--parquet-rows 1000000] [--shards 200 --per-shard 1000]
        [--cases manifest,s3-prefix,csv,parquet,webdataset] [--dbs postgresql,sqlite]

The expand task function is called directly (no Celery worker), on real services: a throwaway
PostgreSQL database (dropped after) and a SQLite file, the machine's Redis under a private key
prefix (chunk messages are really enqueued; counted, then deleted), and moto's S3 server
(tests/fixtures/s3.py `start_moto`). Measured, each against a baseline in the same run:

  (a) a JSONL caption manifest (`{"image": "s3://bench/img-N.jpg"}` per line, in local
      storage) of --small and --lines lines, on PostgreSQL and SQLite;
  (b) an S3 prefix of up to --s3-keys zero-byte objects (created with a thread pool; fewer
      if --s3-fill-budget seconds run out), listed page by page by the expand task;
  (c) a dataset source: an uploaded CSV of --csv-rows image URLs (key, url, caption), the
      same as an uploaded parquet file of --parquet-rows rows (img2dataset's parquet output,
      row groups of 100,000), and
      --shards uploaded WebDataset shards of --per-shard samples each (jpg + json members, as
      img2dataset writes them), with a prompt template over the json's caption.

Streaming is the worker's path: keys listed / lines read a page at a time, each page of
2,000 items inserted with one executemany INSERT and its chunks enqueued at once.
The baseline is the naive path: read the whole manifest (or list the whole prefix with the
boto3 paginator, or read every CSV / parquet file or shard whole and parse it in memory) into
memory,
validate every line the same way, insert all rows with the ORM's add_all in one transaction,
then enqueue the chunks.

Every run happens in a forked child process (warmed up on a 500-line manifest first: its
connections, statement caches and Celery producer), so no run inherits memory another run
freed. Per run: items/s; time to the first chunk message in Redis (a thread polls LLEN every
ms) vs the time the expansion ends; peak RSS growth during the expansion (VmHWM reset through
/proc/self/clear_refs); and, for the manifest runs on --trace-db, tracemalloc's peak of Python
allocations, measured in a second child (tracing slows allocation-heavy code 3-4x, so the
timings come from the untraced run). One machine shared with other work: differences under
~30% are noise. About 3.5 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import tracemalloc
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import redis
from botocore.config import Config
from sqlalchemy import text, update

from janus_batch import constants, files
from janus_batch.db import dispose_engines, is_sqlite, session_scope
from janus_batch.inputs import caption_item, parse_params
from janus_batch.migrate import upgrade
from janus_batch.models import Item, Job, new_id, utcnow
from janus_batch.queue import chunked, make_celery, send_chunk
from janus_batch.settings import Settings
from janus_batch.states import ItemStatus, JobKind, JobStatus
from janus_batch.storage import open_storage
from tests import services
from tests.fixtures.s3 import REGION, start_moto
from worker.context import Context
from worker.expand import expand_source

MANIFEST_BUCKET = "bench"
PREFIX_BUCKET = "bench-prefix"
CHUNK_SIZE = 32
"""Items per chunk message (the settings' default)."""
WARM_UP_LINES = 500
WINDOW = 10**9
"""Chunk messages a job may keep open: unbounded here, so the streaming path enqueues every
chunk as the baseline does (a real job keeps JANUS_BATCH_DISPATCH_WINDOW per worker open)."""


@dataclass
class Run:
    """One measured expansion."""

    case: str
    db: str
    method: str
    items: int
    seconds: float
    first_chunk: float | None
    messages: int
    rss_mib: float
    traced_mib: float | None = None

    @property
    def rate(self) -> float:
        return self.items / self.seconds


# --- measuring ---------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux)


def in_child(function: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `function` in a forked child; returns the dict it returned (JSON over a pipe)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        code = 0
        try:
            out = function()
        except BaseException:
            out, code = {"error": traceback.format_exc()}, 1
        finally:
            dispose_engines()
        with os.fdopen(write_fd, "w") as pipe:
            json.dump(out, pipe)
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    out = json.loads(data or '{"error": "the child died"}')
    if "error" in out:
        raise SystemExit(f"a benchmark run failed:\n{out['error']}")
    return out


class FirstMessage(threading.Thread):
    """Polls the length of a Redis list; records when it first becomes non-empty."""

    def __init__(self, redis_url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(redis_url)
        self.key = key
        self.at: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            if self.client.llen(self.key):
                self.at = time.perf_counter()
                return
            time.sleep(0.001)

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.client.close()


# --- the two ways of expanding -----------------------------------------------------------


def streaming(ctx: Context, job_id: str) -> int:
    """The worker's expand task function."""
    return expand_source(ctx, job_id)


def _insert_all_then_enqueue(ctx: Context, job: Job, inputs: list[dict[str, Any]]) -> int:
    now = utcnow()
    rows = [
        Item(
            job_id=job.id,
            idx=i,
            input=value,
            status=ItemStatus.PENDING.value,
            attempts=0,
            enqueued_at=now,
        )
        for i, value in enumerate(inputs)
    ]
    with session_scope(ctx.database_url) as session:
        session.add_all(rows)
        session.flush()
        ids = [row.id for row in rows]
        session.execute(update(Job).where(Job.id == job.id).values(total=len(rows), expanded=True))
    for chunk in chunked(ids, ctx.settings.chunk_size):
        send_chunk(ctx.app, job.kind, job.id, chunk, model=job.model)
    return len(rows)


def _read_whole(ctx: Context, job: Job, refs: list[str]) -> list[bytes]:
    """Every uploaded file of a dataset source, read whole."""
    found = files.load_files(ctx.database_url, job.owner, refs)
    return [ctx.storage.get_bytes(found[ref].storage_key) for ref in refs]


def _url_row(row: dict[str, Any], params: Any, limit: int) -> dict[str, Any]:
    """The item input of a table row of (key, url, caption), validated like the worker's."""
    value = {"image": row["url"], "custom_id": row["key"]}
    item = caption_item(value, params, where="row", max_prompt_chars=limit)
    return {**item.input, "key": row["key"], "meta": row}


def _naive_dataset(ctx: Context, job: Job, params: Any) -> list[dict[str, Any]]:
    """Baseline of a dataset source: each file read whole, parsed in memory."""
    source, settings = job.source, ctx.settings
    inputs: list[dict[str, Any]] = []
    if "csv" in source:
        for data in _read_whole(ctx, job, source["csv"]):
            rows = csv.DictReader(io.StringIO(data.decode("utf-8")))
            inputs += (_url_row(row, params, settings.max_prompt_chars) for row in rows)
        return inputs
    if "parquet" in source:
        for data in _read_whole(ctx, job, source["parquet"]):
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
            inputs += (_url_row(row, params, settings.max_prompt_chars) for row in rows)
        return inputs
    template = params.prompt
    for ref, data in zip(source["webdataset"], _read_whole(ctx, job, source["webdataset"]),
                         strict=True):  # fmt: skip
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            meta = {m.name.split(".")[0]: json.loads(tar.extractfile(m).read())  # type: ignore[union-attr]
                    for m in members if m.name.endswith(".json")}  # fmt: skip
        for m in members:
            if m.name.endswith(".jpg"):
                key = m.name.split(".")[0]
                inputs.append({"image": f"{ref}#{m.name}", "uri": ref,
                               "range": [m.offset_data, m.size],
                               "prompt": template.format(**meta[key]), "seed": 0, "key": key,
                               "meta": meta[key], "file": ref})  # fmt: skip
    return inputs


def naive(ctx: Context, job_id: str) -> int:
    """Baseline: the whole source in memory, one add_all transaction, then every chunk."""
    with session_scope(ctx.database_url) as session:
        job = session.get(Job, job_id)
    settings = ctx.settings
    params = parse_params(job.kind, job.params, max_n=settings.max_n)
    source = job.source
    if "csv" in source or "parquet" in source or "webdataset" in source:
        return _insert_all_then_enqueue(ctx, job, _naive_dataset(ctx, job, params))
    if "manifest" in source:
        data = ctx.storage.get_bytes(source["manifest"].removeprefix("storage:"))
        values = [json.loads(line) for line in data.splitlines() if line.strip()]
    else:
        bucket, _, prefix = source["s3_prefix"].removeprefix("s3://").partition("/")
        client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=REGION)
        values = [
            f"s3://{bucket}/{obj['Key']}"
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for obj in page.get("Contents", ())
        ]
        client.close()
    inputs = [
        caption_item(
            value, params, where=f"line {i}", max_prompt_chars=settings.max_prompt_chars
        ).input
        for i, value in enumerate(values, start=1)
    ]
    return _insert_all_then_enqueue(ctx, job, inputs)


METHODS: dict[str, Callable[[Context, str], int]] = {"streaming": streaming, "naive": naive}


# --- fixtures ------------------------------------------------------------------------------


def make_ctx(database_url: str, redis_url: str, prefix: str, storage_dir: Path, s3: str) -> Context:
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        queue_prefix=prefix,
        storage_url=str(storage_dir),
        s3_endpoint_url=s3,
        s3_region=REGION,
        chunk_size=CHUNK_SIZE,
        dispatch_window=WINDOW,
    )
    return Context(
        settings=settings,
        storage=open_storage(settings.resolved_storage_url()),
        app=make_celery(settings),
        engine=lambda: None,  # expansion never runs the model
    )


def new_job(ctx: Context, source: dict[str, Any]) -> str:
    job_id = new_id("job")
    raw = {"prompt": "Alt text: {caption}. Describe it."} if "webdataset" in source else None
    params = parse_params(JobKind.CAPTION, raw, max_n=ctx.settings.max_n)
    with session_scope(ctx.database_url) as session:
        session.add(
            Job(
                id=job_id,
                owner=constants.LOCAL_OWNER,
                kind=JobKind.CAPTION,
                status=JobStatus.QUEUED,
                model=ctx.settings.resolved_default_model(),
                params=params.model_dump(mode="json"),
                source=source,
                output_prefix=f"jobs/{job_id}",
                expanded=False,
            )
        )
    return job_id


def write_manifest(storage_dir: Path, lines: int) -> str:
    """A caption manifest of `lines` S3 image URIs in local storage; its `storage:` URI."""
    key = f"inputs/bench/manifest-{lines}.jsonl"
    path = storage_dir / key
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f'{{"image": "s3://{MANIFEST_BUCKET}/img-{i}.jpg"}}\n' for i in range(lines))
    return f"storage:{key}"


def _upload(ctx: Context, data: bytes, name: str) -> str:
    row, _ = files.save_upload(
        ctx.database_url, ctx.storage, owner=constants.LOCAL_OWNER, stream=io.BytesIO(data),
        filename=name, purpose="dataset", max_bytes=1 << 34,
    )  # fmt: skip
    return row.id


def write_csv(ctx: Context, rows: int) -> dict[str, Any]:
    """An uploaded CSV of `rows` image URLs (key, url, caption); its source."""
    buffer = io.StringIO()
    buffer.write("key,url,caption\n")
    buffer.writelines(f"{i:09d},https://img.example/{i}.jpg,picture {i}\n" for i in range(rows))
    file_id = _upload(ctx, buffer.getvalue().encode(), f"urls-{rows}.csv")
    return {"csv": [file_id], "image_column": "url", "key_column": "key", "prompt_column": None}


def write_parquet(ctx: Context, rows: int) -> dict[str, Any]:
    """An uploaded parquet file of `rows` image URLs (key, url, caption); its source."""
    table = pa.table(
        {
            "key": [f"{i:09d}" for i in range(rows)],
            "url": [f"https://img.example/{i}.jpg" for i in range(rows)],
            "caption": [f"picture {i}" for i in range(rows)],
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=100_000)
    file_id = _upload(ctx, buffer.getvalue(), f"urls-{rows}.parquet")
    return {"parquet": [file_id], "image_column": "url", "key_column": "key", "prompt_column": None}


def _shard(first: int, count: int) -> bytes:
    """A shard of `count` img2dataset samples (a 600-byte jpg, a json with caption)."""
    buffer = io.BytesIO()
    image = b"\xff\xd8" + bytes(598)
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(first, first + count):
            meta = json.dumps({"key": f"{i:09d}", "caption": f"picture {i}", "width": 64})
            for ext, data in (("jpg", image), ("json", meta.encode())):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_shards(ctx: Context, shards: int, per_shard: int) -> dict[str, Any]:
    """`shards` uploaded WebDataset shards of `per_shard` samples; their source."""
    ids = [_upload(ctx, _shard(s * per_shard, per_shard), f"{s:05d}.tar") for s in range(shards)]
    return {"webdataset": ids}


def fill_prefix(endpoint: str, count: int, budget: float, threads: int = 16) -> int:
    """Create up to `count` zero-byte images under s3://bench-prefix/imgs/; returns how many
    exist (stops submitting after `budget` seconds)."""
    config = Config(max_pool_connections=threads, request_checksum_calculation="when_required")
    client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, config=config)
    client.create_bucket(Bucket=PREFIX_BUCKET)
    deadline = time.perf_counter() + budget
    done = 0
    step = 1000

    def put(i: int) -> None:
        client.put_object(Bucket=PREFIX_BUCKET, Key=f"imgs/img-{i:07d}.jpg", Body=b"")

    with ThreadPoolExecutor(threads) as pool:
        while done < count and time.perf_counter() < deadline:
            batch = range(done, min(done + step, count))
            list(pool.map(put, batch))
            done += len(batch)
    client.close()
    return done


def reset_tables(database_url: str) -> None:
    """Empty the job tables between runs, so every run inserts into the same empty tables."""
    with session_scope(database_url) as session:
        if is_sqlite(database_url):
            session.execute(text("DELETE FROM items"))
            session.execute(text("DELETE FROM jobs"))
        else:
            session.execute(text("TRUNCATE items, jobs"))


def clear_queues(ctx: Context) -> int:
    """Delete the queued messages; returns how many chunk messages there were."""
    client = redis.Redis.from_url(ctx.settings.redis_url)
    prefix = ctx.settings.queue_prefix
    chunks = int(client.llen(f"{prefix}{constants.CAPTION_QUEUE}"))
    client.delete(*(f"{prefix}{q}" for q in (constants.CAPTION_QUEUE, constants.CONTROL_QUEUE)))
    client.close()
    return chunks


@dataclass(frozen=True)
class Setup:
    """What a child needs to build its own context."""

    database_url: str
    redis_url: str
    prefix: str
    storage_dir: Path
    s3_endpoint: str
    warm_up: dict[str, Any]


def expand_once(setup: Setup, method: str, source: dict[str, Any], traced: bool) -> dict:
    """In a child: warm up, then expand `source` once with `method` into empty tables."""
    ctx = make_ctx(
        setup.database_url, setup.redis_url, setup.prefix, setup.storage_dir, setup.s3_endpoint
    )
    expand = METHODS[method]
    reset_tables(ctx.database_url)
    expand(ctx, new_job(ctx, setup.warm_up))
    clear_queues(ctx)
    reset_tables(ctx.database_url)
    job_id = new_job(ctx, source)
    key = f"{ctx.settings.queue_prefix}{constants.CAPTION_QUEUE}"
    watcher = FirstMessage(ctx.settings.redis_url, key)
    watcher.start()
    if traced:
        tracemalloc.start()
    rss_before = _status_kib("VmRSS")
    _reset_peak_rss()
    started = time.perf_counter()
    added = expand(ctx, job_id)
    seconds = time.perf_counter() - started
    rss_peak = _status_kib("VmHWM")
    traced_peak = tracemalloc.get_traced_memory()[1] if traced else 0
    tracemalloc.stop()
    watcher.stop()
    ctx.storage.close()
    return {
        "added": added,
        "seconds": seconds,
        "first": (watcher.at - started) if watcher.at is not None else None,
        "messages": clear_queues(ctx),
        "rss_mib": max(0, rss_peak - rss_before) / 1024,
        "traced_mib": traced_peak / 2**20,
    }


def measure(
    setup: Setup, case: str, db: str, method: str, source: dict[str, Any], n: int, trace: bool
) -> Run:
    """One run in a child (time, first chunk, messages, RSS); with `trace`, a second traced one."""
    out = in_child(lambda: expand_once(setup, method, source, traced=False))
    if out["added"] != n or out["messages"] < math.ceil(n / CHUNK_SIZE):
        raise SystemExit(f"{case}/{db}/{method}: added {out['added']} items of {n}, {out}")
    run = Run(case, db, method, n, out["seconds"], out["first"], out["messages"], out["rss_mib"])
    if trace:
        run.traced_mib = in_child(lambda: expand_once(setup, method, source, traced=True))[
            "traced_mib"
        ]
    first = f"{run.first_chunk:6.2f} s" if run.first_chunk is not None else "   -"
    traced_peak = f", traced peak {run.traced_mib:.1f} MiB" if run.traced_mib else ""
    print(
        f"  {case:<10} {db:<10} {method:<9} {n:>7,} items {run.seconds:6.2f} s, first chunk "
        f"{first}, {run.messages:,} chunk messages, RSS +{run.rss_mib:.1f} MiB{traced_peak}",
        flush=True,
    )
    return run


def runs_on(
    setup: Setup,
    db: str,
    args: Any,
    cases: list[str],
    manifests: dict[int, dict[str, Any]],
    prefix: tuple[dict[str, Any], int],
) -> list[Run]:
    """Every case's runs on one database."""
    runs = []
    if "manifest" in cases:
        for n in (args.small, args.lines):
            for method in METHODS:
                trace = db == args.trace_db
                runs.append(measure(setup, "manifest", db, method, manifests[n], n, trace))
    if "s3-prefix" in cases:
        for method in METHODS:
            runs.append(measure(setup, "s3-prefix", db, method, prefix[0], prefix[1], False))
    datasets = in_child(lambda: dataset_sources(setup, args, cases))
    for case, (source, n) in datasets.items():
        for method in METHODS:
            runs.append(measure(setup, case, db, method, source, n, False))
    return runs


def dataset_sources(setup: Setup, args: Any, cases: list[str]) -> dict[str, Any]:
    """In a child: upload the CSV and the shards (into this database's files table); returns
    {case: (source, items)}."""
    ctx = make_ctx(
        setup.database_url, setup.redis_url, setup.prefix, setup.storage_dir, setup.s3_endpoint
    )
    out: dict[str, Any] = {}
    t = time.perf_counter()
    if "csv" in cases:
        out["csv"] = (write_csv(ctx, args.csv_rows), args.csv_rows)
    if "parquet" in cases:
        out["parquet"] = (write_parquet(ctx, args.parquet_rows), args.parquet_rows)
    if "webdataset" in cases:
        n = args.shards * args.per_shard
        out["webdataset"] = (write_shards(ctx, args.shards, args.per_shard), n)
    print(f"datasets uploaded in {time.perf_counter() - t:.1f} s", flush=True)
    return out


# --- report ----------------------------------------------------------------------------------


def against_manifest(runs: list[Run]) -> None:
    """Each dataset run's rate against the streaming manifest's on the same database."""
    print(
        "\nmanifest / dataset rate, streaming (same db; the manifest run of the same size, "
        "else the largest; the issue's target is 2x or less):"
    )
    manifests = {
        (r.db, r.items): r for r in runs if r.case == "manifest" and r.method == "streaming"
    }
    for r in runs:
        if r.case in ("manifest", "s3-prefix") or r.method != "streaming":
            continue
        sizes_run = [n for db, n in manifests if db == r.db]
        if not sizes_run:
            continue
        n = r.items if r.items in sizes_run else max(sizes_run)
        m = manifests[(r.db, n)]
        print(
            f"  {r.case:<10} {r.db:<10} {r.items:>9,}: {r.rate:,.0f}/s against the {n:,}-line "
            f"manifest's {m.rate:,.0f}/s: {m.rate / r.rate:4.2f}x"
        )


def table(runs: list[Run]) -> None:
    header = (
        f"{'case':<11}{'db':<11}{'method':<10}{'items':>9}{'seconds':>9}{'items/s':>10}"
        f"{'1st chunk':>11}{'chunks':>8}{'RSS +':>9}{'py peak':>10}"
    )
    print("\n" + header)
    print("-" * len(header))
    for r in runs:
        first = f"{r.first_chunk:.2f} s" if r.first_chunk is not None else "-"
        traced_peak = f"{r.traced_mib:.1f}M" if r.traced_mib is not None else "-"
        print(
            f"{r.case:<11}{r.db:<11}{r.method:<10}{r.items:>9,}{r.seconds:>9.2f}{r.rate:>10,.0f}"
            f"{first:>11}{r.messages:>8,}{r.rss_mib:>8.1f}M{traced_peak:>10}"
        )
    print("\nnaive / streaming (same case, db, size; above 1 = streaming better):")
    pairs: dict[tuple[str, str, int], dict[str, Run]] = {}
    for r in runs:
        pairs.setdefault((r.case, r.db, r.items), {})[r.method] = r
    for (case, db, n), pair in pairs.items():
        if {"streaming", "naive"} <= set(pair):
            s, b = pair["streaming"], pair["naive"]
            line = f"  {case:<10} {db:<10} {n:>7,}: time {b.seconds / s.seconds:4.2f}x"
            if s.first_chunk and b.first_chunk:
                line += f"  first chunk {b.first_chunk / s.first_chunk:6.1f}x"
            line += f"  RSS growth {b.rss_mib / max(s.rss_mib, 0.1):5.1f}x"
            if s.traced_mib and b.traced_mib:
                line += f"  py peak {b.traced_mib / s.traced_mib:5.1f}x"
            print(line)
    against_manifest(runs)
    print("\nmemory by manifest size (streaming should stay flat, naive grows):")
    sizes: dict[tuple[str, str], dict[int, Run]] = {}
    for r in runs:
        if r.case == "manifest":
            sizes.setdefault((r.db, r.method), {})[r.items] = r
    for (db, method), by_size in sizes.items():
        if len(by_size) < 2:
            continue
        small, big = min(by_size), max(by_size)
        a, b = by_size[small], by_size[big]
        line = f"  {db:<10} {method:<9} RSS +{a.rss_mib:.1f} -> +{b.rss_mib:.1f} MiB"
        if a.traced_mib and b.traced_mib:
            line += f", py peak {a.traced_mib:.1f} -> {b.traced_mib:.1f} MiB"
        print(f"{line}  ({small:,} -> {big:,} lines)")


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000, help="the large manifest")
    parser.add_argument("--small", type=int, default=10_000, help="the small manifest")
    parser.add_argument("--s3-keys", type=int, default=20_000, help="objects under the prefix")
    parser.add_argument("--s3-fill-budget", type=float, default=75.0, help="seconds")
    parser.add_argument("--redis-url", default=services.REDIS_URL)
    parser.add_argument("--dbs", default="postgresql,sqlite")
    parser.add_argument(
        "--trace-db", default="sqlite", help="database whose manifest runs are also traced"
    )
    parser.add_argument("--csv-rows", type=int, default=1_000_000, help="rows of the CSV")
    parser.add_argument("--parquet-rows", type=int, default=1_000_000, help="rows of the parquet")
    parser.add_argument("--shards", type=int, default=200, help="WebDataset shards")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    parser.add_argument("--cases", default="manifest,s3-prefix,csv,parquet,webdataset")
    args = parser.parse_args(argv)
    cases = args.cases.split(",")

    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION
    )
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)
    services.ensure_redis()
    prefix = f"jbbench-{uuid.uuid4().hex[:10]}:"
    began = time.perf_counter()
    runs: list[Run] = []
    pg_name = None
    server = start_moto()
    tmp = tempfile.TemporaryDirectory(prefix="janus-bench-expand-")
    storage_dir = Path(tmp.name) / "storage"
    try:
        urls = {}
        dbs = args.dbs.split(",")
        if "postgresql" in dbs:
            pg_name, urls["postgresql"] = services.create_pg_database()
        if "sqlite" in dbs:
            urls["sqlite"] = f"sqlite:///{tmp.name}/jobs.db"
        keys = 0
        if "s3-prefix" in cases:
            print(f"S3: creating up to {args.s3_keys:,} objects ...", flush=True)
            t = time.perf_counter()
            keys = fill_prefix(server.endpoint_url, args.s3_keys, args.s3_fill_budget)
            print(f"S3: {keys:,} objects in {time.perf_counter() - t:.1f} s", flush=True)
        prefix_source = {"s3_prefix": f"s3://{PREFIX_BUCKET}/imgs/"}
        manifests = {
            n: {"manifest": write_manifest(storage_dir, n)}
            for n in (WARM_UP_LINES, args.small, args.lines)
        }
        for db, url in urls.items():
            upgrade(url)
            dispose_engines()  # the children open their own connections
            setup = Setup(
                url, args.redis_url, prefix, storage_dir, server.endpoint_url,
                manifests[WARM_UP_LINES],
            )  # fmt: skip
            runs += runs_on(setup, db, args, cases, manifests, (prefix_source, keys))
    finally:
        dispose_engines()
        if pg_name:
            services.drop_pg_database(pg_name)
        services.delete_prefix(args.redis_url, prefix)
        server.stop()
        tmp.cleanup()
    table(runs)
    print(f"\ntotal bench time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
