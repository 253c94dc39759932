"""POST /v1/jobs/{id}/retry: which jobs and items may be retried, the error classes, the
counters and messages it moves (the worker's part played in SQL)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from janus_batch.db import session_scope
from janus_batch.failures import ErrorClass, classify, matching
from janus_batch.lifecycle import POISON_ERROR
from janus_batch.models import Item
from tests.api.helpers import caption_job, finish_items, set_job

ERRORS = {
    0: None,  # succeeded
    1: "cannot fetch s3://bucket/img1.jpg: no such object",
    2: "cannot read image s3://bucket/img2.jpg: cannot identify image file",
    3: POISON_ERROR,
    4: "model error: JanusRuntimeError: out of memory on cuda:0",
}


def finished_job(client: TestClient, database_url: str) -> dict[str, Any]:
    """A succeeded job of 5 items: 1 succeeded, 4 failed, one of each class above."""
    job = caption_job(client, n=5)
    finish_items(database_url, job["id"], [0], result={"caption": "a cat"})
    for idx, error in ERRORS.items():
        if error:
            finish_items(database_url, job["id"], [idx], "failed", error=error)
    set_job(database_url, job["id"], status="succeeded")
    return job


def retry(client: TestClient, job_id: str, body: Any = None) -> Any:
    if body is None:
        return client.post(f"/v1/jobs/{job_id}/retry")
    return client.post(f"/v1/jobs/{job_id}/retry", json=body)


def statuses(database_url: str, job_id: str) -> list[str]:
    with session_scope(database_url) as session:
        return list(
            session.scalars(select(Item.status).where(Item.job_id == job_id).order_by(Item.idx))
        )


def chunk_ids(queue_messages: Any) -> list[list[int]]:
    return [args[1] for _, args in queue_messages("janus.caption")]


@pytest.mark.parametrize("status", ["queued", "running", "finalizing", "cancelling", "cancelled"])
def test_only_a_finished_job_is_retried(client, database_url, status) -> None:
    job = finished_job(client, database_url)
    set_job(database_url, job["id"], status=status)
    response = retry(client, job["id"])
    assert response.status_code == 409
    assert f"is {status}" in response.json()["error"]["message"]
    assert statuses(database_url, job["id"]).count("failed") == 4


def test_retry_by_class_moves_those_items_and_counts(client, database_url, queue_messages):
    job = finished_job(client, database_url)
    before = chunk_ids(queue_messages)
    response = retry(client, job["id"], {"errors": ["fetch", "lost"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["retries"], body["finished_at"]) == ("running", 1, None)
    assert body["counts"] == {
        "total": 5,
        "pending": 2,
        "running": 0,
        "succeeded": 1,
        "failed": 2,
        "cancelled": 0,
        "expired": 0,
    }
    assert statuses(database_url, job["id"]) == [
        "succeeded",
        "pending",
        "failed",
        "pending",
        "failed",
    ]
    with session_scope(database_url) as session:
        rows = session.execute(
            select(Item.id, Item.idx, Item.error, Item.attempt_base)
            .where(Item.job_id == job["id"], Item.idx.in_([1, 3]))
            .order_by(Item.idx)
        ).all()
    assert [(r.error, r.attempt_base) for r in rows] == [(None, 1), (None, 1)]
    assert chunk_ids(queue_messages)[len(before) :] == [[r.id for r in rows]]

    items = client.get(f"/v1/jobs/{job['id']}/items", params={"status": "failed"}).json()
    assert [(i["idx"], i["error_class"]) for i in items["data"]] == [(2, "image"), (4, "model")]


def test_retry_without_classes_takes_every_item_that_ran(client, database_url):
    job = finished_job(client, database_url)
    with session_scope(database_url) as session:  # failed when the source was read: never ran
        session.execute(
            update(Item).where(Item.job_id == job["id"], Item.idx == 4).values(attempts=0)
        )
    body = retry(client, job["id"]).json()
    assert (body["counts"]["pending"], body["counts"]["failed"]) == (3, 1)
    item = client.get(f"/v1/jobs/{job['id']}/items", params={"status": "failed"}).json()
    assert [(i["idx"], i["error_class"]) for i in item["data"]] == [(4, "input")]


def test_nothing_to_retry_is_a_conflict_that_says_why(client, database_url):
    job = caption_job(client, n=2)
    finish_items(database_url, job["id"], [0, 1], result={"caption": "x"})
    set_job(database_url, job["id"], status="succeeded")
    response = retry(client, job["id"])
    assert response.status_code == 409
    assert response.json()["error"]["message"] == f"job {job['id']} has no failed items to retry"

    job = finished_job(client, database_url)
    response = retry(client, job["id"], {"errors": ["output"]})
    assert response.status_code == 409
    assert "no failed output items" in response.json()["error"]["message"]
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"  # unchanged

    with session_scope(database_url) as session:
        session.execute(update(Item).where(Item.job_id == job["id"]).values(attempts=0))
    message = retry(client, job["id"]).json()["error"]["message"]
    assert "4 failed before they ran" in message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"errors": ["network"]}, "unknown error class 'network'"),
        ({"errors": []}, "name at least one error class"),
        ({"errors": ["input"]}, "never retried"),
        ({"errors": "fetch"}, "valid list"),
        ({"only": ["fetch"]}, "Extra inputs"),
    ],
)
def test_bad_retry_requests_are_422_naming_the_field(client, database_url, body, message):
    job = finished_job(client, database_url)
    response = retry(client, job["id"], body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert message in error["message"]
    assert error["field"] in ("errors", "only")
    assert statuses(database_url, job["id"]).count("failed") == 4


def test_a_second_retry_of_a_retried_job_is_refused(client, database_url):
    job = finished_job(client, database_url)
    assert retry(client, job["id"], {"errors": ["fetch"]}).status_code == 200
    response = retry(client, job["id"], {"errors": ["image"]})
    assert response.status_code == 409
    assert "is running" in response.json()["error"]["message"]
    assert statuses(database_url, job["id"]).count("pending") == 1


def test_unknown_and_other_owners_jobs_are_404(client, database_url, set_env):
    assert retry(client, "job_" + "0" * 24).status_code == 404
    job = finished_job(client, database_url)
    set_env(auth_mode="keys")
    from janus_batch.keys import create_key

    _, key = create_key(database_url, "someone")
    response = client.post(
        f"/v1/jobs/{job['id']}/retry", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 404


def test_classes_read_in_sql_and_in_python_agree(database_url, client):
    texts = [
        *(e for e in ERRORS.values() if e),
        "unsupported input URI 'ftp://x': use s3://, http(s)://",
        "input s3://b/k is larger than the 50,000,000-byte limit",
        "cannot fetch https://h/x: refused by the egress policy",
        "JanusImageError: image has no pixels (0x0)",
        "invalid request: n must be >= 1",
        "cannot store image 0 at jobs/j/images/00000000_0.png: disk full",
        "worker error: RuntimeError: boom",
        "expired: not finished within the job's completion window (24h, ended 2026-12-04)",
        "something nobody foresaw",
        "100% wrong_ly",
    ]
    job = caption_job(client, n=len(texts))
    for idx, text in enumerate(texts):
        finish_items(database_url, job["id"], [idx], "failed", error=text)
    by_python = {text: classify(text) for text in texts}
    assert set(by_python.values()) == set(ErrorClass)
    for cls in ErrorClass:
        with session_scope(database_url) as session:
            query = select(Item.error).where(Item.job_id == job["id"], matching([cls]))
            found = set(session.scalars(query))
        assert found == {t for t, c in by_python.items() if c == cls}, cls
