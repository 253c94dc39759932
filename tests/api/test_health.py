"""/healthz answers while the process is up; /readyz checks the database, Redis and storage
and names what is down."""

from __future__ import annotations

from tests.services import free_port


def test_healthz_and_readyz_ok(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ok", "checks": {"database": "ok", "redis": "ok", "storage": "ok"}
    }  # fmt: skip


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
