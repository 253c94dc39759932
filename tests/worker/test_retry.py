"""Retrying a finished job's failed items in place: submitted and retried over the API, run by
the in-process worker, the counters, attempts and manifests checked after each run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.main import create_app
from janus_batch import lifecycle
from janus_batch.db import session_scope
from janus_batch.lifecycle import POISON_ERROR, Outcome
from janus_batch.models import Item, Job
from janus_batch.states import ItemStatus, JobKind, JobStatus
from tests.worker.helpers import (
    create_job,
    die_holding,
    drain,
    get_items,
    get_job,
    peek_messages,
    png_bytes,
    read_jsonl,
)
from worker.sweeper import sweep


@pytest.fixture
def api(ctx: Any) -> Iterator[TestClient]:
    """The API on the worker's database, Redis key space and storage."""
    with TestClient(create_app()) as client:
        yield client


def manifests(ctx: Any, job_id: str) -> tuple[list[dict], list[dict]]:
    results = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl"))
    errors = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/errors.jsonl"))
    return results, errors


def poison(ctx: Any, job_id: str, item_id: int) -> None:
    """The item's worker is lost three times (killed holding it): the sweeper fails it."""
    for _ in range(lifecycle.MAX_ATTEMPTS):
        die_holding(ctx, job_id, [item_id])
        sweep(ctx)


def test_retry_runs_the_failed_items_again_and_rewrites_the_manifests(
    ctx: Any, s3_env: Any, api: TestClient
) -> None:
    s3 = s3_env.client()
    bucket = s3_env.bucket
    for key in ("in/a.png", "in/lost.png", "in/b.png"):
        s3.put_object(Bucket=bucket, Key=key, Body=png_bytes())
    s3.put_object(Bucket=bucket, Key="in/corrupt.png", Body=b"not a png")
    names = ["a.png", "missing.png", "corrupt.png", "lost.png", "b.png"]
    body = {
        "kind": "caption",
        "items": [{"image": f"s3://{bucket}/in/{n}", "custom_id": n} for n in names],
    }
    job_id = api.post("/v1/jobs", json=body).json()["id"]
    lost = get_items(ctx, job_id)[3]
    poison(ctx, job_id, lost.id)
    drain(ctx)

    job = api.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["counts"]["succeeded"], job["counts"]["failed"]) == (
        "succeeded",
        2,
        3,
    )
    assert job["retries"] == 0
    failed = api.get(f"/v1/jobs/{job_id}/items", params={"status": "failed"}).json()["data"]
    assert {i["custom_id"]: i["error_class"] for i in failed} == {
        "missing.png": "fetch",
        "corrupt.png": "image",
        "lost.png": "lost",
    }
    assert [e["custom_id"] for e in manifests(ctx, job_id)[1]] == names[1:4]

    # the missing input appears, the corrupt one is fixed; retry only fetch and lost errors
    s3.put_object(Bucket=bucket, Key="in/missing.png", Body=png_bytes())
    s3.put_object(Bucket=bucket, Key="in/corrupt.png", Body=png_bytes())
    response = api.post(f"/v1/jobs/{job_id}/retry", json={"errors": ["fetch", "lost"]})
    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["status"], job["retries"], job["finished_at"]) == ("running", 1, None)
    counts = job["counts"]
    assert (counts["succeeded"], counts["failed"], counts["pending"]) == (2, 1, 2)
    retried = [i for i in get_items(ctx, job_id) if i.status == ItemStatus.PENDING]
    assert [i.custom_id for i in retried] == ["missing.png", "lost.png"]
    assert [(i.attempts, i.attempt_base, i.retries, i.error) for i in retried] == [
        (1, 1, 0, None),
        (3, 3, 0, None),
    ]
    # dispatched like new items: one chunk naming exactly the retried items
    assert [args for _, args in peek_messages(ctx, "janus.caption")] == [
        [job_id, [i.id for i in retried]]
    ]
    partial = api.get(f"/v1/jobs/{job_id}/results")
    assert partial.headers["x-partial"] == "true"  # not the old manifest while it runs
    assert api.post(f"/v1/jobs/{job_id}/retry").status_code == 409  # running now

    drain(ctx)
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert (job["counts"]["succeeded"], job["counts"]["failed"]) == (4, 1)
    results, errors = manifests(ctx, job_id)
    assert [r["custom_id"] for r in results] == ["a.png", "missing.png", "lost.png", "b.png"]
    assert [(e["custom_id"], e["error"].startswith("cannot read image")) for e in errors] == [
        ("corrupt.png", True)
    ]
    attempts = {i.custom_id: i.attempts for i in get_items(ctx, job_id)}
    assert (attempts["missing.png"], attempts["lost.png"]) == (2, 4)

    # the rest: every failed item (the image is fixed now)
    job = api.post(f"/v1/jobs/{job_id}/retry").json()
    assert (job["retries"], job["counts"]["failed"], job["counts"]["pending"]) == (2, 0, 1)
    drain(ctx)
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["counts"]["succeeded"], job["counts"]["failed"]) == (
        "succeeded",
        5,
        0,
    )
    results, errors = manifests(ctx, job_id)
    assert ([r["custom_id"] for r in results], errors) == (names, [])
    nothing = api.post(f"/v1/jobs/{job_id}/retry")
    assert nothing.status_code == 409
    assert "no failed items to retry" in nothing.json()["error"]["message"]


def test_an_all_failed_job_is_judged_again_after_a_retry(
    ctx: Any, s3_env: Any, api: TestClient
) -> None:
    bucket = s3_env.bucket
    items = [{"image": f"s3://{bucket}/late/{n}.png"} for n in range(3)]
    job_id = api.post("/v1/jobs", json={"kind": "caption", "items": items}).json()["id"]
    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.failed, job.error) == (
        JobStatus.FAILED,
        3,
        lifecycle.all_failed_error(3),
    )
    for n in range(3):
        s3_env.client().put_object(Bucket=bucket, Key=f"late/{n}.png", Body=png_bytes())
    job = api.post(f"/v1/jobs/{job_id}/retry", json={"errors": ["fetch"]}).json()
    assert (job["status"], job["error"]) == ("running", None)
    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed, job.error) == (JobStatus.SUCCEEDED, 3, 0, None)
    assert job.processed_before == 0  # the rate counts the second run alone
    assert len(manifests(ctx, job_id)[0]) == 3


def test_a_retried_item_has_its_full_attempts_and_old_attempts_count_nothing(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["kills the worker", "fine"])
    [(_, (_, ids))] = peek_messages(ctx, "janus.generate")
    poison(ctx, job_id, ids[0])
    drain(ctx)
    assert [(i.status, i.error) for i in get_items(ctx, job_id)] == [
        (ItemStatus.FAILED, POISON_ERROR),
        (ItemStatus.SUCCEEDED, None),
    ]
    assert get_job(ctx, job_id).status == JobStatus.SUCCEEDED
    with session_scope(ctx.database_url) as session:
        session.execute(update(Item).where(Item.id == ids[0]).values(retries=5))  # deferrals
        assert lifecycle.retry_failed(session, job_id) == 1
        assert lifecycle.restart(session, job_id)
    [item, _] = get_items(ctx, job_id)
    assert (item.status, item.attempts, item.attempt_base, item.retries) == (
        ItemStatus.PENDING,
        3,
        3,
        0,
    )
    old = lifecycle.Claimed(item.id, job_id, item.idx, 3, item.input)
    claims = []
    for n in range(lifecycle.MAX_ATTEMPTS):  # three more workers die holding it
        die_holding(ctx, job_id, [item.id])
        claims.append(get_items(ctx, job_id)[0].attempts)
        if n == 0:  # a late outcome of the attempt before the retry is refused
            with session_scope(ctx.database_url) as session:
                outcome = Outcome(old, ItemStatus.SUCCEEDED, result={})
                assert lifecycle.complete(session, [outcome]) == {}
        sweep(ctx)
    assert claims == [4, 5, 6]
    item = get_items(ctx, job_id)[0]
    assert (item.status, item.error) == (ItemStatus.FAILED, POISON_ERROR)
    job = get_job(ctx, job_id)
    assert (job.failed, job.succeeded) == (1, 1)


def set_job(ctx: Any, job_id: str, **values: Any) -> None:
    with session_scope(ctx.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def test_only_finished_jobs_move_back_to_running(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["a"])
    for status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLED):
        set_job(ctx, job_id, status=status)
        with session_scope(ctx.database_url) as session:
            assert not lifecycle.restart(session, job_id)
    set_job(ctx, job_id, status=JobStatus.FAILED, error="cannot read the manifest")
    with session_scope(ctx.database_url) as session:
        assert lifecycle.restart(session, job_id)
    job = get_job(ctx, job_id)
    assert (job.status, job.error, job.retry_count) == (
        JobStatus.RUNNING,
        "cannot read the manifest",  # the job's own error stays; only the verdict is cleared
        1,
    )
