"""Benchmark of what faults cost: storage outages mid-job, and the API killed mid-submit.

    PYTHONPATH=. python bench/outage.py [--outages 20,120] [--items 300] [--kills 5]

Real services on this machine (127.0.0.1 only): a throwaway PostgreSQL database, a private
Redis key prefix, moto's S3 server as its own process behind a TCP proxy that can be cut
(`tests/fixtures/proxy.py`: connections reset, new ones refused), the real API and a real
Celery worker process on the simulated engine (bench/simulated_engine.py, 0.05 s passes), the
control worker with the sweeper every 5 s. Inputs (images) and results (PNGs, manifests) are
both on the proxied S3.

  storage outage  a caption job of --items S3 images and a generate job of --items prompts
                  (PNG to S3) run together; once both have results the proxy is cut for N
                  seconds, then restored. Counted: failed items, missing outputs (a result
                  line or an image object absent from S3), and how long after the comeback
                  both jobs were final, against the sweep interval of the same run.
  API killed      --kills times: a 10,000-item inline submit with an Idempotency-Key; the
                  API is SIGKILLed while its transaction inserts the items (seen in
                  pg_stat_activity), restarted, the same request sent again. Counted: jobs
                  left with fewer items than their total ("half jobs") and jobs per key.

Prints one markdown table. Cleans up whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

import httpx
from sqlalchemy import func, select

from bench._harness import (
    RESULT_BUCKET,
    S3,
    Api,
    Deployment,
    Photos,
    log,
    parse_time,
    set_aws_env,
)
from bench.simulated_engine import ensure_checkpoint
from janus_batch.db import session_scope
from janus_batch.models import Item, Job
from janus_batch.ops import stack
from tests import services
from tests.fixtures.proxy import TcpProxy

SWEEP_SECONDS = 5.0
BIG = 10_000


def storage_outage(dep: Deployment, s3: S3, uris: list[str], seconds: float, proxy: TcpProxy,
                   items: int) -> dict[str, Any]:  # fmt: skip
    """One outage of `seconds` mid-job; what it cost."""
    api = dep.client
    assert api is not None
    caption = api.submit({"kind": "caption", "params": {"max_new_tokens": 8}, "items": uris})
    generate = api.submit({"kind": "generate", "items": [f"scene {i}" for i in range(items)]})
    deadline = time.monotonic() + 300
    while not any(api.job(j)["counts"]["succeeded"] for j in (caption, generate)):
        if time.monotonic() > deadline:
            raise TimeoutError("no results before the outage")
        dep.check_alive()
        time.sleep(0.05)
    before = {j: api.job(j)["counts"]["succeeded"] for j in (caption, generate)}
    log(f"cutting S3 for {seconds:.0f} s (done so far: {before})")
    proxy.cut()
    time.sleep(seconds)
    during = {j: api.job(j) for j in (caption, generate)}
    proxy.restore()
    back = time.time()
    log("S3 restored")
    views = api.wait([caption, generate], 600, alive=dep.check_alive)
    finished = max(parse_time(v["finished_at"]).timestamp() for v in views.values())  # type: ignore[union-attr]
    with session_scope(dep.database_url) as session:
        first = session.scalar(
            select(func.min(Item.finished_at)).where(
                Item.job_id.in_([caption, generate]),
                Item.finished_at >= datetime.fromtimestamp(back, UTC),
            )
        )
    resumed = (first.replace(tzinfo=first.tzinfo or UTC).timestamp() - back) if first else None
    failed = sum(v["counts"]["failed"] for v in views.values())
    missing = _missing_outputs(dep, s3, views)
    return {
        "outage": seconds,
        "failed": failed,
        "missing": missing,
        "after": finished - back,
        "resumed": resumed,
        "waiting_shown": all(v.get("waiting") for v in during.values()),
        "done_before": sum(before.values()),
        "succeeded": sum(v["counts"]["succeeded"] for v in views.values()),
        "total": sum(v["counts"]["total"] for v in views.values()),
    }


def _missing_outputs(dep: Deployment, s3: S3, views: dict[str, dict[str, Any]]) -> int:
    """Result lines absent from results.jsonl, and generated images absent from S3."""
    missing = 0
    for view in views.values():
        key = f"{dep.tag}/jobs/{view['id']}/results.jsonl"
        body = s3.client.get_object(Bucket=RESULT_BUCKET, Key=key)["Body"].read()
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        missing += view["counts"]["total"] - len(lines)
        for line in lines:
            for image in line.get("images") or []:
                try:
                    s3.client.head_object(Bucket=RESULT_BUCKET, Key=f"{dep.tag}/{image['key']}")
                except Exception:
                    missing += 1
    return missing


def api_killed(dep: Deployment, trial: int) -> tuple[int, int]:
    """SIGKILL the API inside the insert of a large submit, restart, resend: returns (half
    jobs, jobs with this key)."""
    key = f"kill-{trial}"
    body = {"kind": "caption", "items": [f"s3://bench-inputs/imgs/{i:06d}.jpg" for i in range(BIG)]}
    assert dep.api is not None and dep.client is not None
    url = dep.client.url
    sender = threading.Thread(
        target=lambda: _post_quietly(url, body, key), name="big-submit", daemon=True
    )
    sender.start()
    if not services.wait_inserting_items(dep.database_url):
        raise RuntimeError("the API never inserted items")
    os.kill(dep.api.proc.pid, signal.SIGKILL)
    sender.join(30)
    time.sleep(0.5)
    dep.client.close()
    port = stack.free_port()  # a new API process, as a supervisor would restart it
    dep.api = dep._spawn(f"api-{dep.tag}-{trial}", stack.api_command(port), dep.env())
    stack.wait_http(f"http://127.0.0.1:{port}/healthz", dep.api, timeout=90)
    dep.client = Api(f"http://127.0.0.1:{port}")
    answer = dep.client.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    if answer.status_code not in (200, 202):
        raise RuntimeError(f"resend: {answer.status_code} {answer.text[:300]}")
    with session_scope(dep.database_url) as session:
        jobs = session.scalars(select(Job).where(Job.idempotency_key == key)).all()
        half = 0
        for job in session.scalars(select(Job)).all():
            stored = session.scalar(
                select(func.count()).select_from(Item).where(Item.job_id == job.id)
            )
            half += int(stored != job.total or job.total == 0)
        # cancel the resent job: nothing needs to run it
        dep.client.cancel(jobs[0].id) if jobs else None
        return half, len(jobs)


def _post_quietly(url: str, body: dict[str, Any], key: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{url}/v1/jobs", json=body, headers={"Idempotency-Key": key}, timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outages", default="20,120", help="outage lengths in seconds")
    parser.add_argument("--items", type=int, default=300, help="items per job")
    parser.add_argument("--kills", type=int, default=5, help="API kills mid-submit")
    parser.add_argument("--checkpoint", default=os.environ.get("JANUS_SIM_CHECKPOINT"))
    args = parser.parse_args(argv)
    set_aws_env()
    checkpoint = ensure_checkpoint(args.checkpoint)
    work = Path(tempfile.mkdtemp(prefix="janus-bench-outage-"))
    s3 = S3()
    proxy = TcpProxy(int(s3.endpoint.rsplit(":", 1)[1]))
    proxy.restore()
    direct = s3.endpoint
    outages: list[dict[str, Any]] = []
    kills: list[tuple[int, int]] = []
    dep = None
    ok = False
    try:
        uris = s3.upload_images(Photos(), args.items)
        s3.endpoint = f"http://127.0.0.1:{proxy.port}"  # the deployment goes through the proxy
        dep = Deployment(
            work / "pg", db="postgresql", s3=s3, checkpoint=checkpoint, batch_rows=16,
            extra_env={"JANUS_BATCH_SWEEP_INTERVAL": repr(SWEEP_SECONDS),
                       "JANUS_BATCH_MAX_RETRIES": "2"},
        )  # fmt: skip
        dep.start()
        dep.start_gpu_workers(1, pass_seconds=0.05)
        s3.endpoint = direct
        for seconds in [float(s) for s in args.outages.split(",") if s]:
            outages.append(storage_outage(dep, s3, uris, seconds, proxy, args.items))
            log(f"outage {seconds:.0f} s: {outages[-1]}")
        for trial in range(args.kills):
            kills.append(api_killed(dep, trial))
            log(f"API kill {trial}: half jobs {kills[-1][0]}, jobs for the key {kills[-1][1]}")
        ok = True
    finally:
        if dep is not None:
            dep.close()
        proxy.cut()
        s3.close()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"logs kept in {work}")
    print(
        "\n| fault | failed items | lost outputs | first result after the comeback | "
        "sweep interval | ratio | jobs final after the comeback | target |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for o in outages:
        resumed = o["resumed"] if o["resumed"] is not None else float("nan")
        print(
            f"| S3 cut {o['outage']:.0f} s mid-job ({o['total']} items, {o['done_before']} done "
            f"before; `waiting` shown: {'yes' if o['waiting_shown'] else 'no'}) | {o['failed']} "
            f"| {o['missing']} | {resumed:.1f} s | {SWEEP_SECONDS:.0f} s | "
            f"{resumed / SWEEP_SECONDS:.2f} | {o['after']:.1f} s | 0, 0, resumed within 1 "
            "sweep interval |"
        )
    if kills:
        half = sum(h for h, _ in kills)
        per_key = sorted({n for _, n in kills})
        print(
            f"| API SIGKILLed inside a {BIG:,}-item insert, then the same request again "
            f"(x{len(kills)}) | - | half jobs: {half} | jobs per key: {per_key} | - | - | "
            "- | 0 half jobs, 1 job per key |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
