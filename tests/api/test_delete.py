"""Deleting what a user no longer wants kept: a finished job (its stored outputs, then its
rows), an uploaded file, and the retention sweep that does both for old ones."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from janus_batch import lifecycle
from janus_batch.db import session_scope
from janus_batch.models import File, Item, Job, utcnow
from janus_batch.queue import get_celery
from janus_batch.settings import get_settings
from janus_batch.states import ItemStatus
from janus_batch.storage import storage_from_settings
from tests.api.helpers import caption_job, finish_items, set_job
from worker import sweeper
from worker.context import Context
from worker.sweeper import purge_retained


def _rows(database_url: str, job_id: str) -> tuple[int, int]:
    with session_scope(database_url) as session:
        jobs = session.scalar(select(func.count()).select_from(Job).where(Job.id == job_id))
        items = session.scalar(select(func.count()).select_from(Item).where(Item.job_id == job_id))
    return jobs or 0, items or 0


def _outputs(job_id: str) -> list[str]:
    storage = storage_from_settings(get_settings())
    keys = [f"jobs/{job_id}/results.jsonl", f"jobs/{job_id}/images/00000000_0.png"]
    for key in keys:
        storage.put_bytes(key, b"x")
    return keys


def test_a_finished_job_is_deleted_with_its_outputs_a_running_one_is_refused(client, database_url):
    job = caption_job(client, n=2)
    keys = _outputs(job["id"])
    refused = client.delete(f"/v1/jobs/{job['id']}")
    assert refused.status_code == 409 and "cancel it first" in refused.json()["error"]["message"]
    assert _rows(database_url, job["id"]) == (1, 2)

    finish_items(database_url, job["id"], [0, 1])
    set_job(database_url, job["id"], status="succeeded", finished_at=utcnow())
    gone = client.delete(f"/v1/jobs/{job['id']}")
    assert gone.status_code == 200, gone.text
    assert gone.json() == {
        "id": job["id"], "object": "job.deleted", "deleted": True, "objects_removed": 2
    }  # fmt: skip
    assert _rows(database_url, job["id"]) == (0, 0)
    storage = storage_from_settings(get_settings())
    assert not any(storage.exists(key) for key in keys)
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 404


def test_an_upload_is_deleted_its_bytes_kept_while_another_upload_holds_them(client):
    first = client.post("/v1/files", files={"file": ("a.png", b"same bytes")},
                        data={"purpose": "image"}).json()  # fmt: skip
    storage = storage_from_settings(get_settings())
    with session_scope(get_settings().resolved_database_url()) as session:
        key = session.scalar(select(File.storage_key).where(File.id == first["id"]))
    assert storage.exists(key)
    gone = client.delete(f"/v1/files/{first['id']}")
    assert gone.status_code == 200 and gone.json()["objects_removed"] == 1
    assert not storage.exists(key)
    assert client.get(f"/v1/files/{first['id']}").status_code == 404
    missing = client.delete(f"/v1/files/{first['id']}")
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "file_id"


def test_retention_deletes_old_finished_jobs_and_uploads_in_batches(client, set_env, database_url):
    old, recent, running = (caption_job(client, n=1) for _ in range(3))
    for job in (old, recent):
        finish_items(database_url, job["id"], [0])
    set_job(database_url, old["id"], status="succeeded", finished_at=utcnow() - timedelta(days=9))
    set_job(database_url, recent["id"], status="succeeded", finished_at=utcnow())
    set_job(database_url, running["id"], created_at=utcnow() - timedelta(days=30))
    keys = _outputs(old["id"])
    upload = client.post("/v1/files", files={"file": ("b.png", b"old upload")},
                         data={"purpose": "image"}).json()  # fmt: skip
    with session_scope(database_url) as session:
        session.execute(
            File.__table__.update()
            .where(File.id == upload["id"])
            .values(created_at=utcnow() - timedelta(days=9))
        )
    settings = set_env(retention_days="7")
    ctx = Context(settings, storage_from_settings(settings), get_celery())
    assert purge_retained(ctx, utcnow()) == {"retention_jobs": 1, "retention_files": 1}
    assert _rows(database_url, old["id"]) == (0, 0)
    assert not any(ctx.storage.exists(key) for key in keys)
    assert _rows(database_url, recent["id"]) == (1, 1)
    assert _rows(database_url, running["id"]) == (1, 1)  # not finished: never deleted
    assert client.get(f"/v1/files/{upload['id']}").status_code == 404
    assert purge_retained(ctx, utcnow()) == {"retention_jobs": 0, "retention_files": 0}
    assert purge_retained(Context(get_settings().model_copy(update={"retention_days": 0}),
                                  ctx.storage, ctx.app), utcnow()) == {
        "retention_jobs": 0, "retention_files": 0}  # fmt: skip


def _ctx(settings):
    return Context(settings, storage_from_settings(settings), get_celery())


def test_a_delete_holds_off_retry_and_cancel_and_the_sweeper_finishes_one_cut_short(
    client, set_env, database_url
):
    job = caption_job(client, n=2)
    finish_items(database_url, job["id"], [0])
    finish_items(database_url, job["id"], [1], status=ItemStatus.FAILED, error="fetch: timeout")
    set_job(database_url, job["id"], status="failed", finished_at=utcnow())
    keys = _outputs(job["id"])
    with session_scope(database_url) as session:  # a DELETE that died after its first step
        assert lifecycle.start_deleting(session, job["id"])
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "deleting"
    retried = client.post(f"/v1/jobs/{job['id']}/retry")
    assert retried.status_code == 409  # the outputs it would rely on are being removed
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409
    assert _rows(database_url, job["id"]) == (1, 2)

    ctx = _ctx(set_env(retention_days="0"))  # no retention: deletions are finished anyway
    assert purge_retained(ctx, utcnow())["retention_jobs"] == 0  # its DELETE may be alive
    assert purge_retained(ctx, utcnow() + timedelta(minutes=3))["retention_jobs"] == 1
    assert _rows(database_url, job["id"]) == (0, 0)
    assert not any(ctx.storage.exists(key) for key in keys)


def test_a_delete_of_a_job_left_deleting_finishes_it(client, database_url):
    job = caption_job(client, n=1)
    finish_items(database_url, job["id"], [0])
    set_job(database_url, job["id"], status="deleting", finished_at=utcnow())
    keys = _outputs(job["id"])
    assert client.delete(f"/v1/jobs/{job['id']}").json()["objects_removed"] == len(keys)
    assert _rows(database_url, job["id"]) == (0, 0)


def test_retention_skips_a_job_it_cannot_delete_and_goes_on(client, set_env, database_url):
    bad, good = caption_job(client, n=1), caption_job(client, n=1)
    old = utcnow() - timedelta(days=9)
    for job in (bad, good):
        finish_items(database_url, job["id"], [0])
        set_job(database_url, job["id"], status="succeeded", finished_at=old)
    set_job(database_url, bad["id"], output_prefix="jobs//broken")  # the storage refuses it
    old = utcnow() - timedelta(days=10)
    set_job(database_url, bad["id"], finished_at=old)  # the first one the sweep takes
    keys = _outputs(good["id"])
    ctx = _ctx(set_env(retention_days="7"))
    assert purge_retained(ctx, utcnow()) == {"retention_jobs": 1, "retention_files": 0}
    assert _rows(database_url, good["id"]) == (0, 0)
    assert not any(ctx.storage.exists(key) for key in keys)
    assert _rows(database_url, bad["id"]) == (1, 1)  # logged, tried again next sweep


def test_retention_takes_a_big_job_over_several_sweeps(
    client, set_env, database_url, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(sweeper, "PURGE_OBJECTS", 2)
    job = caption_job(client, n=1)
    finish_items(database_url, job["id"], [0])
    set_job(database_url, job["id"], status="succeeded", finished_at=utcnow() - timedelta(days=9))
    storage = storage_from_settings(get_settings())
    keys = [f"jobs/{job['id']}/images/{i:08d}_0.png" for i in range(3)]
    for key in keys:
        storage.put_bytes(key, b"x")
    ctx = _ctx(set_env(retention_days="7"))
    now = utcnow()
    assert purge_retained(ctx, now)["retention_jobs"] == 0  # the budget ran out in this job
    assert sum(ctx.storage.exists(key) for key in keys) == 1
    assert _rows(database_url, job["id"]) == (1, 1)
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "deleting"
    assert purge_retained(ctx, now + timedelta(minutes=3))["retention_jobs"] == 1
    assert _rows(database_url, job["id"]) == (0, 0)
    assert not any(ctx.storage.exists(key) for key in keys)


def test_retention_keeps_an_old_upload_an_unfinished_job_may_read(client, set_env, database_url):
    upload = client.post("/v1/files", files={"file": ("c.png", b"kept bytes")},
                         data={"purpose": "image"}).json()  # fmt: skip
    with session_scope(database_url) as session:
        session.execute(File.__table__.update().where(File.id == upload["id"])
                        .values(created_at=utcnow() - timedelta(days=9)))  # fmt: skip
    again = client.post("/v1/files", files={"file": ("c.png", b"kept bytes")},
                        data={"purpose": "image"}).json()  # fmt: skip
    assert again["id"] == upload["id"]  # a duplicate hands back the old file
    job = client.post("/v1/jobs", json={"kind": "caption", "items": [{"image": upload["id"]}]})
    assert job.status_code == 202, job.text
    ctx = _ctx(set_env(retention_days="7"))
    assert purge_retained(ctx, utcnow())["retention_files"] == 0  # the job may still read it
    assert client.get(f"/v1/files/{upload['id']}").status_code == 200
    finish_items(database_url, job.json()["id"], [0])
    set_job(database_url, job.json()["id"], status="succeeded", finished_at=utcnow())
    assert purge_retained(ctx, utcnow())["retention_files"] == 1
