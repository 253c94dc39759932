"""Benchmark of the worker pipeline end to end: does the model ever wait?

    PYTHONPATH=. python bench/pipeline.py [--only caption-busy,small-jobs,...]
        [--pass-seconds 0.25] [--items 1000] [--batch-rows 16] [--big-items 2000]

Real services on this machine (127.0.0.1 only): a throwaway PostgreSQL database, a private
Redis key prefix, moto's S3 server as its own process, the real API (uvicorn) and real Celery
worker processes, built with `janus_batch.ops.stack`. The GPU workers run the simulated engine
(bench/simulated_engine.py: the real `prepare` and packing on a tiny 384x384 checkpoint,
forward passes of a fixed --pass-seconds), so "model busy" measures the pipeline around the
model, not the model. Parts (--only, comma-separated; aliases: busy, small-jobs, zero, all):

  caption-busy    one worker, a caption job of --items S3 images (source: s3_prefix)
  generate-busy   one worker, a generate job of --items/2 prompts (n=1, PNG to S3)
  two-workers     two workers, a caption job of 2 x --items S3 images (inline items)
  small-captions  100 caption jobs of 1-3 items (197 items), posted together, vs one job of
                  the same 197 items: forward passes and fill
  small-generate  the same with generate prompts
  latency         a 5-item caption job alone, and posted 1 s after a --big-items caption job
                  (the big job is cancelled once the small one ended)
  zero-s3         zero-cost model (0 s passes), PostgreSQL + S3: caption and generate items/s
                  end to end vs the S3 server's own GET / PUT rate and the PNG encode rate,
                  measured in the same run with the worker's concurrency
  zero-sqlite     zero-cost model, SQLite + a local folder: caption items/s end to end
                  (images uploaded through POST /v1/files)

Model busy = the worker's `janus_engine_busy_seconds_total` (Prometheus, per worker process)
over the job's wall time, from its started_at to its last item's finished_at. Passes and fill
come from `janus_engine_passes_total` / `janus_engine_rows_total` (fill = rows / (passes x
batch rows)). Latency and items/s end to end are created_at -> finished_at of the job (so
they include expansion, dispatch and finalize). Prints one markdown table; details go to the
log lines above it. Cleans up whatever happens (processes, database, Redis keys, moto).
With the defaults about 5 minutes on a 2-core machine (shared: expect noise).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import (
    CAPTION_PROMPT,
    S3,
    TERMINAL,
    Api,
    Deployment,
    Photos,
    in_threads,
    job_seconds,
    log,
    parse_time,
    png_encode_rate,
    prepare_rate,
    set_aws_env,
    small_job_sizes,
    split_commands,
)
from bench.simulated_engine import ensure_checkpoint
from janus_batch.settings import Settings

PARTS = (
    "caption-busy",
    "generate-busy",
    "two-workers",
    "small-captions",
    "small-generate",
    "latency",
    "zero-s3",
    "zero-sqlite",
)
ALIASES = {
    "all": PARTS,
    "busy": ("caption-busy", "generate-busy", "two-workers"),
    "small-jobs": ("small-captions", "small-generate"),
    "zero": ("zero-s3", "zero-sqlite"),
}
SMALL_JOBS, SMALL_ITEMS = 100, 197
LATENCY_ITEMS = 5
PROMPTS = (
    "a red fox in the snow",
    "a lighthouse at dusk, watercolor",
    "a bowl of fresh fruit on a white plate",
    "two dogs running on a beach at golden hour",
)


def default_of(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass
class Row:
    what: str
    measured: str
    limit: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None


@dataclass
class Bench:
    """What every part needs: the arguments, the services, and the rows so far."""

    args: argparse.Namespace
    work: Path
    s3: S3
    photos: Photos
    image_uris: list[str]
    checkpoint: Path
    rows: list[Row]
    pg: Deployment | None = None
    _prepare_rate: float | None = None

    def prepare_rate(self) -> float:
        """Caption inputs/s one thread decodes and prepares (measured once per run)."""
        if self._prepare_rate is None:
            self._prepare_rate = prepare_rate(self.checkpoint, self.photos, 200)
            log(f"decode + prepare of a caption input, one thread: {self._prepare_rate:.0f}/s")
        return self._prepare_rate

    def deployment(self) -> Deployment:
        """The PostgreSQL + S3 deployment, started on first use."""
        if self.pg is None:
            log("starting the PostgreSQL + S3 deployment (API, control worker) ...")
            self.pg = Deployment(
                self.work / "pg", db="postgresql", s3=self.s3, checkpoint=self.checkpoint,
                batch_rows=self.args.batch_rows,
            )  # fmt: skip
            self.pg.start()
        return self.pg

    def workers(self, count: int, pass_seconds: float) -> Deployment:
        dep = self.deployment()
        live = [g for g in dep.gpus if g.child.proc.poll() is None]
        if len(live) != count or len(dep.gpus) != count or dep.pass_seconds != pass_seconds:
            log(f"GPU workers: {count} at {pass_seconds:g} s per pass ...")
            dep.ensure_gpu_workers(count, pass_seconds)
            warm_up(dep, self.image_uris[:2])
        return dep

    def timeout(self, passes: float, pass_seconds: float | None = None) -> float:
        seconds = self.args.pass_seconds if pass_seconds is None else pass_seconds
        return 120 + 6 * passes * seconds


# --- request bodies --------------------------------------------------------------------------


def caption_body(uris: list[str]) -> dict[str, Any]:
    return {
        "kind": "caption",
        "params": {"prompt": CAPTION_PROMPT},
        "items": [{"image": uri} for uri in uris],
    }


def generate_body(count: int, start: int = 0) -> dict[str, Any]:
    return {
        "kind": "generate",
        "params": {"n": 1, "format": "png"},
        "items": [
            {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i} for i in range(start, start + count)
        ],
    }


def cycle(values: list[str], count: int) -> list[str]:
    return list(itertools.islice(itertools.cycle(values), count))


def check_succeeded(views: list[dict[str, Any]]) -> None:
    """RuntimeError unless every job succeeded with every item succeeded."""
    bad = [
        f"{v['id']}: {v['status']} {v['counts']}"
        for v in views
        if v["status"] != "succeeded" or v["counts"]["succeeded"] != v["counts"]["total"]
    ]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(views)} jobs did not fully succeed: {bad[:3]}")


def warm_up(dep: Deployment, uris: list[str]) -> None:
    """One small job of each kind through the fresh workers (connections, caches)."""
    api = dep.client
    assert api is not None
    ids = [api.submit(caption_body(uris)), api.submit(generate_body(2))]
    check_succeeded(list(api.wait(ids, timeout=180, alive=dep.check_alive).values()))


# --- the parts -------------------------------------------------------------------------------


def busy_run(
    dep: Deployment, body: dict[str, Any], timeout: float
) -> tuple[dict[str, Any], list[float], float, list[Any]]:
    """Run one job; per worker its busy fraction over the job's wall time (started_at to
    the last item's finish), the wall time, and the per-worker counter deltas."""
    api = dep.client
    assert api is not None
    before = [g.snapshot() for g in dep.gpus]
    job_id = api.submit(body)
    view = api.wait([job_id], timeout, alive=dep.check_alive)[job_id]
    after = [g.snapshot() for g in dep.gpus]
    started = parse_time(view["started_at"])
    last = dep.last_item_finish(job_id)
    check_succeeded([view])
    if started is None or last is None:
        raise RuntimeError(f"job {job_id} has no start or no finished item: {view}")
    window = (last - started).total_seconds()
    deltas = [a - b for a, b in zip(after, before, strict=True)]
    return view, [d.busy / window for d in deltas], window, deltas


def describe_deltas(deltas: list[Any], b: Bench) -> str:
    """Per worker: busy seconds (passes x pass time, the rest: decodes and the engine
    thread's own overhead), passes, fill."""
    rows_per_pass, pass_seconds = b.args.batch_rows, b.args.pass_seconds
    return "; ".join(
        f"worker {i + 1}: {d.busy:.1f} s busy ({d.passes} passes = "
        f"{d.passes * pass_seconds:.1f} s), fill {d.rows / max(1, d.passes * rows_per_pass):.0%}"
        for i, d in enumerate(deltas)
    )


def _one_worker_busy(b: Bench, name: str, what: str, body: dict[str, Any], rows: float) -> None:
    """Run one job on one GPU worker; its row: the model's busy share of the job's time."""
    dep = b.workers(1, b.args.pass_seconds)
    view, busy, window, deltas = busy_run(dep, body, b.timeout(rows / b.args.batch_rows))
    log(
        f"{name}: {view['counts']['succeeded']} items in {window:.1f} s "
        f"(end to end {job_seconds(view):.1f} s); {describe_deltas(deltas, b)}"
    )
    b.rows.append(
        Row(
            f"model busy, {what}, one worker",
            f"{busy[0]:.0%} ({deltas[0].busy:.1f} s of {window:.1f} s)",
            target=">= 95%",
            met=busy[0] >= 0.95,
        )
    )


def part_caption_busy(b: Bench) -> None:
    n = b.args.items
    body = {
        "kind": "caption",
        "params": {"prompt": CAPTION_PROMPT},
        "source": {"s3_prefix": b.args.prefix_uri},
    }
    _one_worker_busy(b, "caption-busy", f"caption job of {n:,} S3 images", body, n)


def part_generate_busy(b: Bench) -> None:
    n = b.args.items // 2
    what = f"generate job of {n:,} prompts (PNG to S3)"
    _one_worker_busy(b, "generate-busy", what, generate_body(n), 2 * n)


def part_two_workers(b: Bench) -> None:
    n = 2 * b.args.items
    dep = b.workers(2, b.args.pass_seconds)
    view, busy, window, deltas = busy_run(
        dep, caption_body(cycle(b.image_uris, n)), b.timeout(n / b.args.batch_rows)
    )
    log(
        f"two-workers: {view['counts']['succeeded']} items in {window:.1f} s; "
        f"{describe_deltas(deltas, b)}"
    )
    b.rows.append(
        Row(
            f"model busy per worker, two workers (caption job of {n:,} S3 images)",
            " / ".join(f"{x:.0%}" for x in busy),
            target=">= 90%",
            met=min(busy) >= 0.90,
        )
    )


def _passes_of(
    dep: Deployment, bodies: list[dict[str, Any]], timeout: float, *, queued: bool = False
) -> tuple[int, int]:
    """Submit the jobs together, wait for all; (passes, rows) the worker ran for them. With
    `queued`, the GPU worker is held (SIGSTOP) while they are posted and let go (SIGCONT)
    once all are in the queue: the packing alone, not the API's posting rate, is measured."""
    api = dep.client
    assert api is not None
    before = dep.gpus[0].snapshot()
    pid = dep.gpus[0].child.proc.pid
    began = time.perf_counter()
    if queued:
        os.kill(pid, signal.SIGSTOP)
    try:
        ids = api.submit_many(bodies)
    finally:
        if queued:
            os.kill(pid, signal.SIGCONT)
    posted = time.perf_counter() - began
    views = api.wait(ids, timeout, alive=dep.check_alive)
    submitted = time.perf_counter() - began
    check_succeeded(list(views.values()))
    delta = dep.gpus[0].snapshot() - before
    log(f"  {len(bodies)} jobs posted in {posted:.2f} s, all ended after {submitted:.2f} s")
    return delta.passes, delta.rows


def part_small_jobs(b: Bench, kind: str) -> None:
    dep = b.workers(1, b.args.pass_seconds)
    rows_per = b.args.batch_rows
    sizes = small_job_sizes(SMALL_JOBS, SMALL_ITEMS)
    if kind == "caption":
        uris = cycle(b.image_uris, SMALL_ITEMS)
        bodies, at = [], 0
        for size in sizes:
            bodies.append(caption_body(uris[at : at + size]))
            at += size
        one = caption_body(uris)
    else:
        bodies, at = [], 0
        for size in sizes:
            bodies.append(generate_body(size, start=at))
            at += size
        one = generate_body(SMALL_ITEMS)
    timeout = b.timeout(2 * SMALL_ITEMS)
    posted_passes, _ = _passes_of(dep, bodies, timeout)  # as they arrive from the API
    small_passes, small_rows = _passes_of(dep, bodies, timeout, queued=True)
    one_passes, one_rows = _passes_of(dep, [one], timeout, queued=True)
    small_fill = small_rows / max(1, small_passes * rows_per)
    one_fill = one_rows / max(1, one_passes * rows_per)
    ratio = small_passes / max(1, one_passes)
    log(
        f"small-{kind}: {SMALL_JOBS} jobs queued: {small_passes} passes, {small_rows} rows "
        f"({posted_passes} passes as the API posted them); "
        f"one job: {one_passes} passes, {one_rows} rows"
    )
    b.rows.append(
        Row(
            f"{SMALL_JOBS} {kind} jobs of 1-3 items ({SMALL_ITEMS} items), all queued: "
            "forward passes",
            f"{small_passes} passes at {small_fill:.0%} fill ({posted_passes} while the API "
            "was still posting them)",
            f"one job of the same items: {one_passes} passes at {one_fill:.0%} fill",
            f"{ratio:.2f}x",
            "<= 1.15x",
            ratio <= 1.15,
        )
    )


def part_latency(b: Bench) -> None:
    dep = b.workers(1, b.args.pass_seconds)
    api = dep.client
    assert api is not None
    small = caption_body(b.image_uris[-LATENCY_ITEMS:])
    alone = []
    for _ in range(3):
        job_id = api.submit(small)
        alone.append(job_seconds(api.wait([job_id], 120, alive=dep.check_alive)[job_id]))
    alone_s = statistics.median(alone)
    big_n = b.args.big_items
    big = api.submit(caption_body(cycle(b.image_uris, big_n)))
    time.sleep(1.0)
    try:
        job_id = api.submit(small)
        view = api.wait([job_id], b.timeout(big_n / b.args.batch_rows), alive=dep.check_alive)
        with_big = job_seconds(view[job_id])
        progress = api.job(big)["counts"]
    finally:
        api.cancel(big)
        api.wait([big], 300, alive=dep.check_alive)
    ratio = with_big / alone_s
    log(
        f"latency: alone {', '.join(f'{x:.2f}' for x in alone)} s (median {alone_s:.2f}); "
        f"after the big job {with_big:.2f} s, when the big job had "
        f"{progress['succeeded']}/{progress['total']} done (then cancelled)"
    )
    b.rows.append(
        Row(
            f"a {LATENCY_ITEMS}-item caption job posted 1 s after a {big_n:,}-item caption job",
            f"{with_big:.2f} s",
            f"alone: {alone_s:.2f} s",
            f"{ratio:.1f}x",
            "<= 5x",
            ratio <= 5,
        )
    )


def part_zero_s3(b: Bench) -> None:
    dep = b.workers(1, 0.0)
    api = dep.client
    assert api is not None
    n, n_gen = b.args.items, b.args.items // 2
    uris = cycle(b.image_uris, n)
    job_id = api.submit(caption_body(uris))
    cap = api.wait([job_id], b.timeout(n / 16, 0.25), alive=dep.check_alive)[job_id]
    job_id = api.submit(generate_body(n_gen))
    gen = api.wait([job_id], b.timeout(n_gen / 8, 0.25), alive=dep.check_alive)[job_id]
    check_succeeded([cap, gen])
    cap_rate, gen_rate = n / job_seconds(cap), n_gen / job_seconds(gen)
    fetch_c, upload_c = default_of("fetch_concurrency"), default_of("upload_concurrency")
    level = default_of("png_compress_level") if "png_compress_level" in Settings.model_fields else 6
    keys = [uri.split("/", 3)[3] for uri in uris]
    get_rate = b.s3.get_rate(keys, fetch_c)
    encode_rate, png = png_encode_rate(n_gen, upload_c, level)
    put_rate = b.s3.put_rate(png, n_gen, upload_c)
    gen_limit = min(put_rate, encode_rate)
    log(
        f"zero-s3: caption {n} items in {job_seconds(cap):.2f} s = {cap_rate:.0f}/s; generate "
        f"{n_gen} in {job_seconds(gen):.2f} s = {gen_rate:.0f}/s; moto GET {get_rate:.0f}/s "
        f"({fetch_c} threads), PUT {put_rate:.0f}/s of {len(png) / 1024:.0f} KiB PNGs "
        f"({upload_c} threads), PNG encode {encode_rate:.0f}/s (level {level}, {upload_c} "
        "threads)"
    )
    b.rows.append(
        Row(
            "zero-cost model, PostgreSQL + S3 server: caption items/s end to end",
            f"{cap_rate:.0f}/s",
            f"server GET rate: {get_rate:.0f}/s (decode + prepare, one thread: "
            f"{b.prepare_rate():.0f}/s)",
            f"{cap_rate / get_rate:.2f}",
            ">= 0.8",
            cap_rate / get_rate >= 0.8,
        )
    )
    which = "PUT" if put_rate <= encode_rate else "PNG encode"
    b.rows.append(
        Row(
            "zero-cost model, PostgreSQL + S3 server: generate images/s end to end",
            f"{gen_rate:.0f}/s",
            f"{which} rate: {gen_limit:.0f}/s (PUT {put_rate:.0f}/s, encode {encode_rate:.0f}/s)",
            f"{gen_rate / gen_limit:.2f}",
            ">= 0.8",
            gen_rate / gen_limit >= 0.8,
        )
    )


def part_zero_sqlite(b: Bench) -> None:
    n = b.args.items
    log("starting the SQLite + local folder deployment ...")
    dep = Deployment(
        b.work / "sqlite", db="sqlite", s3=None, checkpoint=b.checkpoint,
        batch_rows=b.args.batch_rows,
    )  # fmt: skip
    try:
        api = dep.start()
        dep.start_gpu_workers(1, 0.0)
        started = time.perf_counter()
        file_ids = _upload(api, b.photos, n + 2)
        log(f"zero-sqlite: {n + 2} images uploaded in {time.perf_counter() - started:.1f} s")
        warm_up(dep, file_ids[n:])
        job_id = api.submit(caption_body(file_ids[:n]))
        view = api.wait([job_id], b.timeout(n / 16, 0.25), alive=dep.check_alive)[job_id]
        check_succeeded([view])
        seconds = job_seconds(view)
        last, first = dep.last_item_finish(job_id), parse_time(view["started_at"])
        worker_s = (last - first).total_seconds() if last and first else math.nan
        log(
            f"zero-sqlite: {n} items in {seconds:.2f} s end to end "
            f"({worker_s:.2f} s first claim to last item)"
        )
        b.rows.append(
            Row(
                "zero-cost model, SQLite + local folder: caption items/s end to end",
                f"{n / seconds:.0f}/s",
                f"(decode + prepare, one thread: {b.prepare_rate():.0f}/s)",
                target=">= 1,000/s",
                met=n / seconds >= 1000,
            )
        )
    finally:
        dep.close()


def _upload(api: Api, photos: Photos, count: int) -> list[str]:
    """`count` distinct JPEGs uploaded through POST /v1/files (8 at a time); their file ids."""

    def one(i: int) -> str:
        return api.upload_image(photos.jpeg(i), f"{i:06d}.jpg")

    return in_threads(one, range(count), 8)


RUNNERS: dict[str, Callable[[Bench], None]] = {
    "caption-busy": part_caption_busy,
    "generate-busy": part_generate_busy,
    "two-workers": part_two_workers,
    "small-captions": lambda b: part_small_jobs(b, "caption"),
    "small-generate": lambda b: part_small_jobs(b, "generate"),
    "latency": part_latency,
    "zero-s3": part_zero_s3,
    "zero-sqlite": part_zero_sqlite,
}
ORDER = (  # parts on the same workers run together; the zero-cost ones restart them
    "caption-busy",
    "generate-busy",
    "small-captions",
    "small-generate",
    "latency",
    "two-workers",
    "zero-s3",
    "zero-sqlite",
)


# --- report --------------------------------------------------------------------------------


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print()
    print(
        f"Simulated engine: {args.pass_seconds:g} s per forward pass (zero-cost rows: 0 s), "
        f"{args.batch_rows} rows per pass; worker commands: "
        f"{'GPU + control workers' if split_commands() else 'one solo worker (all queues)'}."
    )
    print()
    print("| what | measured | limit or baseline measured in this run | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        mark = "" if r.met is None else (" (met)" if r.met else " (**not met**)")
        print(f"| {r.what} | {r.measured} | {r.limit} | {r.ratio} | {r.target}{mark} |")


def selected(only: str) -> list[str]:
    chosen: set[str] = set()
    for name in (s.strip() for s in only.split(",") if s.strip()):
        if name in ALIASES:
            chosen.update(ALIASES[name])
        elif name in PARTS:
            chosen.add(name)
        else:
            known = ", ".join(PARTS + tuple(ALIASES))
            raise SystemExit(f"unknown part {name!r}: choose from {known}")
    return [p for p in ORDER if p in chosen]


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(f"signal {signum}: cleaning up")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="all", help=f"parts: {', '.join(PARTS)} (or aliases)")
    parser.add_argument("--pass-seconds", type=float, default=0.25)
    parser.add_argument("--items", type=int, default=1000, help="caption items (generate: half)")
    parser.add_argument("--big-items", type=int, default=2000, help="the latency part's big job")
    parser.add_argument("--batch-rows", type=int, default=default_of("batch_rows"))
    parser.add_argument("--checkpoint", default=os.environ.get("JANUS_SIM_CHECKPOINT"))
    parser.add_argument("--keep-logs", action="store_true", help="keep the work dir and logs")
    args = parser.parse_args(argv)
    parts = selected(args.only)
    signal.signal(signal.SIGTERM, _terminate)
    set_aws_env()
    began = time.perf_counter()
    checkpoint = ensure_checkpoint(args.checkpoint)
    tmp = tempfile.mkdtemp(prefix="janus-bench-pipeline-")
    work = Path(tmp)
    rows: list[Row] = []
    failures: list[str] = []
    s3 = None
    bench = None
    try:
        s3 = S3()
        photos = Photos()
        count = max(args.items, 8)
        log(f"moto at {s3.endpoint}; uploading {count} JPEGs ...")
        uris = s3.upload_images(photos, count)
        args.prefix_uri = uris[0].rsplit("/", 1)[0] + "/"
        bench = Bench(args, work, s3, photos, uris, checkpoint, rows)
        for part in parts:
            log(f"== {part}")
            try:
                RUNNERS[part](bench)
            except Exception as exc:
                failures.append(part)
                traceback.print_exc()
                if bench.pg is not None:
                    print(bench.pg.tails(), file=sys.stderr)
                rows.append(Row(part, f"not measured: {type(exc).__name__}: {str(exc)[:120]}"))
                recover(bench)
    finally:
        if bench is not None and bench.pg is not None:
            bench.pg.close()
        if s3 is not None:
            s3.close()
        if args.keep_logs or failures:
            log(f"logs kept in {work}/*/logs")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows, args)
    print(f"\ntotal bench time {time.perf_counter() - began:.0f} s")
    return 1 if failures else 0


def recover(bench: Bench) -> None:
    """After a failed part: cancel whatever still runs, and restart the workers next time."""
    dep = bench.pg
    if dep is None or dep.client is None:
        return
    try:
        page = dep.client.http.get("/v1/jobs", params={"limit": 100}).json()
        live = [j["id"] for j in page.get("data", []) if j["status"] not in TERMINAL]
        for job_id in live:
            dep.client.cancel(job_id)
        if live:
            dep.client.wait(live, 120)
    except Exception as exc:  # best effort
        log(f"recovery: {exc}")
    dep.stop_gpu_workers()


if __name__ == "__main__":
    sys.exit(main())
