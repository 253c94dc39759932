"""POST /v1/jobs/{id}/cancel: pending items cancelled and counted, finished ones kept, the job
cancelling (or finalizing when nothing runs), 409 for a job that is already final."""

from __future__ import annotations

from sqlalchemy import select

from janus_batch.constants import CONTROL_QUEUE, EXPAND_SOURCE_TASK, FINALIZE_JOB_TASK
from janus_batch.db import session_scope
from janus_batch.models import Item
from tests.api.helpers import caption_job, finish_items, set_item_status, set_job


def _statuses(database_url: str, job_id: str) -> list[str]:
    with session_scope(database_url) as session:
        rows = session.scalars(select(Item.status).where(Item.job_id == job_id).order_by(Item.idx))
        return list(rows)


def test_cancel_keeps_finished_items_and_waits_for_running(client, database_url, queue_messages):
    job = caption_job(client, n=5)
    finish_items(database_url, job["id"], [0, 1], result={"caption": "kept"})
    set_item_status(database_url, job["id"], [2], "running")

    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelling"
    assert cancelled["counts"] == {
        "total": 5, "pending": 0, "running": 1, "succeeded": 2, "failed": 0, "cancelled": 2,
        "expired": 0,
    }  # fmt: skip
    assert _statuses(database_url, job["id"]) == [
        "succeeded", "succeeded", "running", "cancelled", "cancelled"
    ]  # fmt: skip
    assert queue_messages(CONTROL_QUEUE) == []  # the running item's worker finalizes

    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["counts"]["cancelled"] == 2


def test_cancel_with_nothing_running_hands_off_to_finalize(client, database_url, queue_messages):
    job = caption_job(client, n=3)
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "finalizing"
    assert response.json()["counts"]["cancelled"] == 3
    assert queue_messages(CONTROL_QUEUE) == [(FINALIZE_JOB_TASK, [job["id"]])]

    conflict = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert conflict.status_code == 409
    assert "finalizing" in conflict.json()["error"]["message"]


def test_cancel_final_job_is_409(client, database_url):
    job = caption_job(client, n=1)
    finish_items(database_url, job["id"], [0], result={"caption": "done"})
    set_job(database_url, job["id"], status="succeeded")
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["message"].endswith(
        "is already succeeded; it cannot be cancelled"
    )
    assert _statuses(database_url, job["id"]) == ["succeeded"]


def test_cancel_source_job_before_expansion(client, database_url, queue_messages):
    job = client.post(
        "/v1/jobs", json={"kind": "caption", "source": {"s3_prefix": "s3://b/p/"}}
    ).json()
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    # not expanded yet: the expand task sees `cancelling`, stops and finalizes
    assert response.json()["status"] == "cancelling"
    assert [task for task, _ in queue_messages(CONTROL_QUEUE)] == [EXPAND_SOURCE_TASK]
