"""POST /v1/jobs with `model`: a name the fleet serves (a live worker's, from its heartbeat;
one of JANUS_BATCH_SERVED_MODELS; the default) is recorded on the job and routes its chunks to
that model's queue; any other name is a 422 that lists the served ones."""

from __future__ import annotations

import pytest
import redis

from janus_batch import fleet
from janus_batch.queue import model_slug
from tests.api.helpers import caption_job

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

ITEMS = [{"image": "s3://bucket/a.jpg"}]


def _announce(settings, hostname: str, model: str, queues: list[str]) -> None:
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        fleet.announce(conn, settings.queue_prefix, hostname, queues, model=model)
    finally:
        conn.close()


def test_an_unknown_model_is_a_422_listing_the_served_ones(client, set_env, queue_len):
    settings = set_env(model="/ckpt/a", served_models="janus-pro-7b, janus-pro-1b")
    _announce(settings, "gpu1@h", "live-b", ["janus.caption." + model_slug("live-b")])
    response = client.post("/v1/jobs", json={"kind": "caption", "items": ITEMS, "model": "nope"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "model"
    assert error["message"].endswith(
        "unknown model 'nope': this fleet serves '/ckpt/a', 'janus-pro-7b', 'janus-pro-1b', "
        "'live-b'"
    )
    for bad in ("", "  ", 7, "x" * 513):
        response = client.post("/v1/jobs", json={"kind": "caption", "items": ITEMS, "model": bad})
        assert (response.status_code, response.json()["error"]["field"]) == (422, "model"), bad
    assert client.get("/v1/jobs").json()["data"] == []
    assert queue_len("janus.caption") == 0


def test_a_model_known_from_the_setting_is_accepted_and_waits_for_its_worker(
    client, set_env, queue_len
):
    settings = set_env(model="/ckpt/a", served_models="janus-pro-7b")
    own = "janus.caption." + model_slug("janus-pro-7b")
    job = caption_job(client, n=2, model="janus-pro-7b")
    plain = caption_job(client, n=1)
    assert (job["model"], plain["model"]) == ("janus-pro-7b", "/ckpt/a")
    assert (queue_len(own), queue_len("janus.caption")) == (1, 1)
    assert job["live_workers"] == 0
    listed = {j["id"]: j["model"] for j in client.get("/v1/jobs").json()["data"]}
    assert listed == {job["id"]: "janus-pro-7b", plain["id"]: "/ckpt/a"}

    ready = client.get("/readyz").json()
    assert ready["models"]["/ckpt/a"]["default"] is True
    assert ready["models"]["janus-pro-7b"] == {
        "default": False,
        "workers": 0,
        "queues": {"caption": own, "generate": "janus.generate." + model_slug("janus-pro-7b")},
    }
    assert f"no live worker consumes {own} (model janus-pro-7b)" in ready["warnings"]

    _announce(settings, "gpu7@h", "janus-pro-7b", [own, "janus.generate"])
    assert client.get(f"/v1/jobs/{job['id']}").json()["live_workers"] == 1
    assert client.get(f"/v1/jobs/{plain['id']}").json()["live_workers"] == 0
    ready = client.get("/readyz").json()
    assert ready["models"]["janus-pro-7b"]["workers"] == 1 and ready["workers"][own] == 1


def test_readyz_warns_of_a_model_only_waiting_jobs_still_name(client, set_env):
    """A model retired from SERVED_MODELS (or renamed) while its jobs wait: /readyz still
    lists it, with no worker, and warns that nobody consumes its queue."""
    set_env(model="/ckpt/a", served_models="janus-pro-7b")
    job = caption_job(client, n=1, model="janus-pro-7b")
    set_env(model="/ckpt/a", served_models="")  # retired; the job is still queued
    own = "janus.caption." + model_slug("janus-pro-7b")
    ready = client.get("/readyz").json()
    assert ready["models"]["janus-pro-7b"]["workers"] == 0, job
    assert f"no live worker consumes {own} (model janus-pro-7b)" in ready["warnings"]


def test_a_live_workers_model_is_accepted_and_counts_in_an_idempotent_replay(
    client, set_env, queue_len
):
    settings = set_env(model="/ckpt/a")
    own = "janus.caption." + model_slug("live-only")
    _announce(settings, "gpu9@h", "live-only", [own])
    body = {"kind": "caption", "items": ITEMS, "model": "live-only"}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k"})
    assert first.status_code == 202, first.text
    assert (first.json()["model"], first.json()["live_workers"], queue_len(own)) == (
        "live-only",
        1,
        1,
    )
    again = client.post(
        "/v1/jobs", json={**body, "model": "/ckpt/a"}, headers={"Idempotency-Key": "k"}
    )
    assert (again.status_code, again.json()["error"]["field"]) == (422, "Idempotency-Key")


def test_a_replay_is_answered_after_its_model_is_retired(client, set_env):
    """An Idempotency-Key replay returns the job it created, even once its model is no
    longer served (the job was accepted; only new jobs are refused)."""
    set_env(model="/ckpt/a", served_models="janus-pro-7b")
    body = {"kind": "caption", "items": ITEMS, "model": "janus-pro-7b"}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "r"})
    assert first.status_code == 202, first.text
    set_env(model="/ckpt/a", served_models="")
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "r"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"], again.text
    fresh = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "s"})
    assert (fresh.status_code, fresh.json()["error"]["field"]) == (422, "model")
