"""POST /v1/jobs with a completion window: `completion_window` or `expires_at` (422 naming the
field when bad), the default and maximum settings, the job object's expires_at and expired
count, idempotent replays, and retry of an expired job (a fresh window of the same length)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from janus_batch.db import session_scope
from janus_batch.expiry import expired_error
from janus_batch.models import Job
from tests.api.helpers import caption_job, finish_items, set_job

ITEMS = [{"image": "s3://bucket/a.jpg"}, {"image": "s3://bucket/b.jpg"}]


def submit(client: TestClient, **fields: Any) -> Any:
    return client.post("/v1/jobs", json={"kind": "caption", "items": ITEMS, **fields})


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def in_hours(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()


BAD = [
    ({"completion_window": "24h", "expires_at": in_hours(1)}, "completion_window", "not both"),
    ({"completion_window": "soon"}, "completion_window", "duration"),
    ({"completion_window": "24 hours"}, "completion_window", "duration"),
    ({"completion_window": "0"}, "completion_window", "longer than 0"),
    ({"completion_window": -5}, "completion_window", "negative"),
    ({"completion_window": True}, "completion_window", ""),
    ({"completion_window": 1.5}, "completion_window", ""),
    ({"completion_window": "31d"}, "completion_window", "longest completion window"),
    ({"expires_at": "tomorrow"}, "expires_at", "ISO 8601"),
    ({"expires_at": "2030-01-01T10:00:00"}, "expires_at", "timezone"),
    ({"expires_at": "2020-01-01T10:00:00Z"}, "expires_at", "in the past"),
    ({"expires_at": in_hours(24 * 40)}, "expires_at", "longest completion window"),
    ({"expires_at": 1_900_000_000}, "expires_at", ""),
]


def test_bad_windows_get_a_422_naming_the_field(client, database_url) -> None:
    for fields, field, words in BAD:
        response = submit(client, **fields)
        assert response.status_code == 422, (fields, response.text)
        error = response.json()["error"]
        assert error["field"] == field, (fields, error)
        assert words in error["message"], (fields, error)
    with session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_the_job_object_shows_its_window(client) -> None:
    job = submit(client, completion_window="30m").json()
    created, expires = parse(job["created_at"]), parse(job["expires_at"])
    assert expires - created == timedelta(minutes=30)
    assert job["completion_window"] == "30m"
    assert job["counts"]["expired"] == 0

    when = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    job = submit(
        client, expires_at=when.astimezone(timezone(timedelta(hours=2))).isoformat()
    ).json()
    assert parse(job["expires_at"]) == when
    assert client.get(f"/v1/jobs/{job['id']}").json()["expires_at"] == job["expires_at"]

    never = submit(client).json()
    assert (never["expires_at"], never["completion_window"]) == (None, None)
    assert submit(client, completion_window=7200).json()["completion_window"] == "2h"


def test_the_default_and_the_maximum_are_settings(client, set_env) -> None:
    set_env(default_completion_window="24h", max_completion_window="2d")
    job = submit(client).json()
    assert job["completion_window"] == "24h"
    assert submit(client, completion_window="3d").json()["error"]["field"] == "completion_window"
    assert submit(client, completion_window="2d").json()["completion_window"] == "2d"
    set_env(default_completion_window="0", max_completion_window="")
    assert submit(client).json()["expires_at"] is None
    assert submit(client, completion_window="90d").status_code == 202


def test_a_bad_window_setting_is_refused_at_startup() -> None:
    from janus_batch.settings import Settings

    with pytest.raises(ValueError, match="duration"):
        Settings(default_completion_window="one day")
    assert Settings(max_completion_window="7d").completion_windows() == (0, 7 * 86400)


def test_a_replay_with_the_same_window_is_the_same_request(client) -> None:
    key = {"Idempotency-Key": "nightly-1"}
    body = {"kind": "caption", "items": ITEMS, "completion_window": "24h"}
    first = client.post("/v1/jobs", json=body, headers=key)
    assert first.status_code == 202
    again = client.post("/v1/jobs", json={**body, "completion_window": 86400}, headers=key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.json()["expires_at"] == first.json()["expires_at"]
    other = client.post("/v1/jobs", json={**body, "completion_window": "12h"}, headers=key)
    assert other.status_code == 422 and other.json()["error"]["field"] == "Idempotency-Key"
    bare = client.post("/v1/jobs", json={"kind": "caption", "items": ITEMS}, headers=key)
    assert bare.status_code == 422  # the window is part of the request


def expired_job(client: TestClient, database_url: str) -> dict[str, Any]:
    """An expired job of 3 items with a 2 h window: 1 succeeded, 1 failed, 1 expired."""
    job = caption_job(client, n=3, completion_window="2h")
    expires = parse(job["expires_at"])
    finish_items(database_url, job["id"], [0], result={"caption": "a cat"})
    finish_items(database_url, job["id"], [1], "failed", error="cannot fetch s3://bucket/img1")
    error = expired_error(expires, parse(job["created_at"]))
    finish_items(database_url, job["id"], [2], "expired", error=error)
    set_job(database_url, job["id"], status="expired", finished_at=expires)
    return job


def test_an_expired_job_lists_and_counts_its_expired_items(client, database_url) -> None:
    job = expired_job(client, database_url)
    got = client.get(f"/v1/jobs/{job['id']}").json()
    assert (got["status"], got["counts"]["expired"], got["counts"]["pending"]) == ("expired", 1, 0)
    assert [j["id"] for j in client.get("/v1/jobs?status=expired").json()["data"]] == [job["id"]]
    items = client.get(f"/v1/jobs/{job['id']}/items?status=expired").json()["data"]
    assert [(i["idx"], i["error_class"]) for i in items] == [(2, "expired")]
    assert "completion window (2h" in items[0]["error"]
    errors = client.get(f"/v1/jobs/{job['id']}/results?errors=true").text.splitlines()
    assert len(errors) == 2 and '"status":"expired"' in errors[1]


def test_retry_of_an_expired_job_gets_a_fresh_window(client, database_url) -> None:
    job = expired_job(client, database_url)
    only = client.post(f"/v1/jobs/{job['id']}/retry", json={"errors": ["expired"]})
    assert only.status_code == 200, only.text
    body = only.json()
    assert body["status"] == "running"
    assert (body["counts"]["expired"], body["counts"]["failed"], body["counts"]["pending"]) == (
        0, 1, 1,
    )  # fmt: skip
    retried, expires = parse(body["retried_at"]), parse(body["expires_at"])
    assert expires - retried == timedelta(hours=2)  # the same length, from the retry
    assert expires > parse(job["expires_at"])
    assert body["completion_window"] == "2h"


def test_an_expiring_job_cannot_be_cancelled(client, database_url) -> None:
    job = caption_job(client, n=2, completion_window="1h")
    set_job(database_url, job["id"], status="expiring")
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert "expiring" in response.json()["error"]["message"]
