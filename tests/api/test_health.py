"""/healthz answers while the process is up; /readyz checks the database, Redis and storage
and names what is down."""

from __future__ import annotations

from tests.services import free_port


def test_healthz_and_readyz_ok(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert (body["status"], body["checks"]) == (
        "ok", {"database": "ok", "redis": "ok", "storage": "ok"}
    )  # fmt: skip


def test_readyz_and_jobs_say_when_no_live_worker_consumes_a_queue(client, settings_env):
    """No worker announced: the API is ready, but says jobs would wait; a worker that
    announces itself (as every worker process does, `worker.presence`) is counted."""
    import redis

    from janus_batch import fleet

    body = client.get("/readyz").json()
    assert body["workers"] == {"janus.caption": 0, "janus.generate": 0, "janus.control": 0}
    assert "no live worker consumes janus.generate" in body["warnings"]
    job = client.post("/v1/jobs", json={"kind": "generate", "items": ["a fox"]}).json()
    assert job["live_workers"] == 0
    assert client.get(f"/v1/jobs/{job['id']}").json()["live_workers"] == 0

    r = redis.Redis.from_url(settings_env.redis_url)
    fleet.announce(r, settings_env.queue_prefix, "gpu0@h", ["janus.caption", "janus.generate"])
    fleet.announce(r, settings_env.queue_prefix, "control@h", ["janus.control"], ttl=1)
    fleet.record_sweep(r, settings_env.queue_prefix)
    body = client.get("/readyz").json()
    assert body["workers"] == {"janus.caption": 1, "janus.generate": 1, "janus.control": 1}
    assert body["warnings"] == []
    assert client.get(f"/v1/jobs/{job['id']}").json()["live_workers"] == 1
    fleet.withdraw(r, settings_env.queue_prefix, "gpu0@h")
    assert client.get(f"/v1/jobs/{job['id']}").json()["live_workers"] == 0


def test_readyz_503_when_redis_is_down(client, set_env):
    set_env(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok" and body["checks"]["storage"] == "ok"
    assert body["checks"]["redis"].startswith("error: ")
    assert body["error"]["message"].startswith("redis: ")
    assert client.get("/healthz").status_code == 200


def test_readyz_names_database_and_storage_problems(client, set_env, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    set_env(
        database_url=f"sqlite:///{tmp_path / 'never-migrated.db'}",
        storage_url=str(not_a_folder / "results"),
    )
    body = client.get("/readyz").json()
    assert body["checks"]["redis"] == "ok"
    assert "janus-batch db upgrade" in body["checks"]["database"]
    assert body["checks"]["storage"].startswith("error: ")
    assert body["error"]["message"].startswith("database: ")


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}/results", "/v1/files", "/readyz"} <= set(spec["paths"])
    assert {"JobCreate", "JobPublic", "JobsPublic", "ErrorBody"} <= set(
        spec["components"]["schemas"]
    )


def test_readyz_warns_of_a_stale_sweeper_and_a_worker_without_storage(client, settings_env):
    """The sweeper records each run; readyz warns when none is recorded or the last is older
    than three intervals, and when a worker's presence says its storage is down."""
    import time

    import redis

    from janus_batch import fleet

    r = redis.Redis.from_url(settings_env.redis_url)
    prefix = settings_env.queue_prefix
    body = client.get("/readyz").json()
    assert body["sweeper"] == {"last_run_seconds_ago": None}
    assert any("sweeper has never run" in w for w in body["warnings"])

    r.set(f"{prefix}{fleet.SWEEP_KEY}", repr(time.time() - 600))  # interval: 60 s
    body = client.get("/readyz").json()
    assert body["sweeper"]["last_run_seconds_ago"] >= 600
    assert any("the sweeper last ran 6" in w for w in body["warnings"])

    fleet.record_sweep(r, prefix)
    fleet.announce(r, prefix, "gpu0@h", ["janus.caption"], storage_down_since=time.time() - 42)
    body = client.get("/readyz").json()
    assert body["status"] == "ok" and body["sweeper"]["last_run_seconds_ago"] < 5
    assert not any("sweeper" in w for w in body["warnings"])
    assert any(w.startswith("worker gpu0@h: storage unreachable for 4") for w in body["warnings"])
