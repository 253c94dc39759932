"""Quotas per key (`janus_batch.quotas`): outstanding items, jobs per minute, upload bytes per
day. Over one, the API answers 429 with Retry-After and a message naming the limit (its
`field`); another key is unaffected; the settings are the defaults, open mode's too."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from janus_batch import keys
from janus_batch.db import session_scope
from janus_batch.models import File, Item, Job, utcnow
from tests.api.helpers import finish_items, set_job

ROOT = Path(__file__).resolve().parents[2]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(client: TestClient, key: str | None, n: int, **headers: str) -> Any:
    items = [{"image": f"s3://bucket/img{i}.jpg"} for i in range(n)]
    auth = _auth(key) if key else {}
    return client.post("/v1/jobs", json={"kind": "caption", "items": items}, headers=auth | headers)


def upload(client: TestClient, key: str | None, data: bytes) -> Any:
    return client.post(
        "/v1/files",
        files={"file": ("x.png", data)},
        data={"purpose": "image"},
        headers=_auth(key) if key else {},
    )


def assert_429(response: Any, limit: str, wait: tuple[int, int]) -> str:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["field"] == limit and f"({limit})" in error["message"]
    assert wait[0] <= int(response.headers["retry-after"]) <= wait[1]
    return str(error["message"])


def test_outstanding_items_count_only_live_jobs(client, set_env, database_url) -> None:
    set_env(auth_mode="keys")
    _, alice = keys.create_key(database_url, "alice", {"max_outstanding_items": 5})
    _, bob = keys.create_key(database_url, "bob")  # the default: unlimited

    first = submit(client, alice, 3).json()
    message = assert_429(submit(client, alice, 3), "max_outstanding_items", (60, 60))
    assert "has 3 items pending or running" in message and "limit of 5" in message
    assert submit(client, bob, 50).status_code == 202  # bob is unaffected

    finish_items(database_url, first["id"], [0, 1])  # 1 left of the first job
    second = submit(client, alice, 4)
    assert second.status_code == 202, second.text
    assert_429(submit(client, alice, 1), "max_outstanding_items", (1, 60))

    set_job(database_url, first["id"], status="cancelled")  # final: its last item is not counted
    assert submit(client, alice, 1).status_code == 202
    with session_scope(database_url) as session:
        counted = session.scalar(
            select(func.count()).select_from(Job).where(Job.status == "queued")
        )
    assert counted == 3  # the refused submits wrote nothing: bob's, alice's second and third


def test_a_retry_past_the_outstanding_items_rolls_back(client, set_env, database_url) -> None:
    set_env(auth_mode="keys")
    _, alice = keys.create_key(database_url, "alice", {"max_outstanding_items": 4})
    done = submit(client, alice, 3).json()
    finish_items(database_url, done["id"], [0, 1, 2], "failed", error="cannot fetch x: gone")
    set_job(database_url, done["id"], status="failed")
    live = submit(client, alice, 2).json()

    refused = client.post(f"/v1/jobs/{done['id']}/retry", headers=_auth(alice))
    message = assert_429(refused, "max_outstanding_items", (60, 60))
    assert "3 more would pass its limit of 4" in message
    with session_scope(database_url) as session:
        assert session.get(Job, done["id"]).status == "failed"
        states = session.scalars(select(Item.status).where(Item.job_id == done["id"]))
        assert set(states) == {"failed"}

    finish_items(database_url, live["id"], [0, 1])
    set_job(database_url, live["id"], status="succeeded")
    again = client.post(f"/v1/jobs/{done['id']}/retry", headers=_auth(alice))
    assert again.status_code == 200, again.text


def test_jobs_per_minute_is_a_sliding_window(client, set_env, database_url) -> None:
    set_env(auth_mode="keys", jobs_per_minute="2")  # the default of keys without their own
    alice_row, alice = keys.create_key(database_url, "alice")
    bob_row, bob = keys.create_key(database_url, "bob")
    keys.update_key(database_url, bob_row.id, {"jobs_per_minute": 0})  # bob: unlimited

    assert submit(client, alice, 1, **{"Idempotency-Key": "a"}).status_code == 202
    assert submit(client, alice, 1).status_code == 202
    message = assert_429(submit(client, alice, 1), "jobs_per_minute", (55, 60))
    assert "submitted 2 jobs in the last minute" in message
    replay = submit(client, alice, 1, **{"Idempotency-Key": "a"})
    assert replay.status_code == 200  # an idempotent replay creates nothing: free
    for _ in range(3):
        assert submit(client, bob, 1).status_code == 202

    with session_scope(database_url) as session:  # the older of alice's jobs ages out
        oldest = session.scalars(
            select(Job).where(Job.owner == alice_row.id).order_by(Job.created_at)
        ).first()
        oldest.created_at = utcnow() - timedelta(seconds=61)
    assert submit(client, alice, 1).status_code == 202
    assert_429(submit(client, alice, 1), "jobs_per_minute", (55, 60))

    keys.update_key(database_url, alice_row.id, {"jobs_per_minute": 5})  # her own limit wins
    assert submit(client, alice, 1).status_code == 202


def test_open_mode_takes_the_settings(client, set_env) -> None:
    set_env(jobs_per_minute="1")
    assert submit(client, None, 1).status_code == 202
    assert_429(submit(client, None, 1), "jobs_per_minute", (55, 60))


def test_upload_bytes_per_day(client, set_env, database_url) -> None:
    set_env(auth_mode="keys")
    alice_row, alice = keys.create_key(database_url, "alice", {"upload_bytes_per_day": 100})
    _, bob = keys.create_key(database_url, "bob")

    assert upload(client, alice, b"a" * 60).status_code == 201
    assert upload(client, alice, b"a" * 60).status_code == 200  # a duplicate is free
    message = assert_429(upload(client, alice, b"b" * 50), "upload_bytes_per_day", (86000, 86400))
    assert "uploaded 60 bytes in the last 24 hours; 50 more would pass" in message
    assert upload(client, bob, b"b" * 500).status_code == 201  # bob is unaffected
    assert upload(client, alice, b"c" * 40).status_code == 201  # 100 exactly
    message = assert_429(upload(client, alice, b"d" * 101), "upload_bytes_per_day", (86400, 86400))
    assert "alone are over" in message

    with session_scope(database_url) as session:
        assert (
            session.scalar(select(func.count()).select_from(File).where(File.owner == alice_row.id))
            == 2
        )  # nothing of the refused uploads was kept
        session.execute(
            update(File)
            .where(File.owner == alice_row.id, File.bytes == 60)
            .values(created_at=utcnow() - timedelta(days=1, seconds=1))
        )
    assert upload(client, alice, b"b" * 50).status_code == 201


def test_the_quota_rule_lives_in_the_services() -> None:
    """One module holds the rule; the job and upload services call it, no route does."""
    for service in ("janus_batch/jobs.py", "janus_batch/files.py"):
        assert re.search(r"quotas\.check_\w+\(", (ROOT / service).read_text()), service
    uses = re.compile(r"quotas\.\w+\(|import [^\n]*\bquotas\b|janus_batch\.quotas import")
    for module in (ROOT / "api").rglob("*.py"):
        if module.name != "errors.py":  # turns QuotaExceeded into 429
            assert not uses.search(module.read_text()), module
