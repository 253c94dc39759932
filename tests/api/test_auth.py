"""API keys: stored hashed; in `keys` mode every /v1 request needs one, and a key sees only
what it created."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from janus_batch import keys
from janus_batch.db import session_scope
from janus_batch.models import ApiKey, Job


def test_key_lifecycle(database_url):
    row, plaintext = keys.create_key(database_url, "ci")
    assert plaintext.startswith("jb_") and len(plaintext) > 40
    assert row.id.startswith("key_") and row.name == "ci"
    assert row.prefix == plaintext[:10]
    with session_scope(database_url) as session:
        stored = session.scalars(select(ApiKey)).one()
    assert stored.key_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in (stored.key_hash, stored.prefix, stored.name)

    assert keys.verify_key(database_url, plaintext).id == row.id
    assert keys.verify_key(database_url, plaintext + "x") is None
    assert keys.verify_key(database_url, "not-a-key") is None

    other, _ = keys.create_key(database_url, "laptop")
    assert [k.name for k in keys.list_keys(database_url)] == ["ci", "laptop"]
    assert keys.revoke_key(database_url, row.prefix).id == row.id
    assert keys.verify_key(database_url, plaintext) is None
    assert keys.revoke_key(database_url, row.id).revoked_at is not None  # idempotent
    assert keys.revoke_key(database_url, "key_nope") is None
    assert [k.id for k in keys.list_keys(database_url, include_revoked=False)] == [other.id]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_mode_requires_a_valid_key(client, set_env, database_url):
    set_env(auth_mode="keys")
    body = {"kind": "generate", "items": ["a fox"]}
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
        _auth("jb_wrong"),
        {"Authorization": "Bearer jb_\u00e9t\u00e9".encode("latin-1")},
    ):
        response = client.post("/v1/jobs", json=body, headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["field"] == "Authorization"
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/v1/files", params={"sha256": "0" * 64}).status_code == 401
    assert client.get("/healthz").status_code == 200

    row, plaintext = keys.create_key(database_url, "me")
    created = client.post("/v1/jobs", json=body, headers=_auth(plaintext))
    assert created.status_code == 202
    with session_scope(database_url) as session:
        assert session.get(Job, created.json()["id"]).owner == row.id

    keys.revoke_key(database_url, row.id)
    revoked = client.get("/v1/jobs", headers=_auth(plaintext))
    assert revoked.status_code == 401
    assert "revoked" in revoked.json()["error"]["message"]


def test_a_key_sees_only_its_own_jobs_and_files(client, set_env, database_url):
    set_env(auth_mode="keys")
    _, alice = keys.create_key(database_url, "alice")
    _, bob = keys.create_key(database_url, "bob")
    job = client.post(
        "/v1/jobs", json={"kind": "generate", "items": ["a fox"]}, headers=_auth(alice)
    ).json()
    job_id = job["id"]

    for method, url in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/items"),
        ("GET", f"/v1/jobs/{job_id}/results"),
        ("GET", f"/v1/jobs/{job_id}/files/images/00000000_0.png"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
    ]:
        response = client.request(method, url, headers=_auth(bob))
        assert response.status_code == 404, (url, response.text)
    assert client.get("/v1/jobs", headers=_auth(bob)).json()["data"] == []
    assert [j["id"] for j in client.get("/v1/jobs", headers=_auth(alice)).json()["data"]] == [
        job_id
    ]
    assert client.get(f"/v1/jobs/{job_id}", headers=_auth(alice)).json()["status"] == "queued"

    # the same idempotency key is per owner
    same = {"Idempotency-Key": "k"}
    a = client.post(
        "/v1/jobs", json={"kind": "generate", "items": ["x"]}, headers=_auth(alice) | same
    )
    b = client.post(
        "/v1/jobs", json={"kind": "generate", "items": ["x"]}, headers=_auth(bob) | same
    )
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]

    upload = client.post(
        "/v1/files",
        files={"file": ("a.png", b"alice's image")},
        data={"purpose": "image"},
        headers=_auth(alice),
    ).json()
    sha = upload["sha256"]
    assert client.get("/v1/files", params={"sha256": sha}, headers=_auth(bob)).json()["data"] == []
    assert client.get(f"/v1/files/{upload['id']}", headers=_auth(bob)).status_code == 404
    steal = client.post(
        "/v1/jobs", json={"kind": "caption", "items": [upload["id"]]}, headers=_auth(bob)
    )
    assert steal.status_code == 422
    assert steal.json()["error"]["field"] == "items[0].image"
    assert "unknown file id" in steal.json()["error"]["message"]


def test_jobs_made_in_open_mode_are_reached_by_no_key_after_the_switch(
    client, set_env, database_url
):
    """As README says: open-mode jobs belong to the owner `local`, which no key is; after
    switching to keys mode they stay in the table, unreachable (404), and open mode reads
    them again."""
    job_id = client.post("/v1/jobs", json={"kind": "generate", "items": ["a fox"]}).json()["id"]
    set_env(auth_mode="keys")
    _, key = keys.create_key(database_url, "admin")
    assert client.get(f"/v1/jobs/{job_id}", headers=_auth(key)).status_code == 404
    assert client.get("/v1/jobs", headers=_auth(key)).json()["data"] == []
    with session_scope(database_url) as session:
        assert session.get(Job, job_id) is not None
    set_env(auth_mode="open")
    assert client.get(f"/v1/jobs/{job_id}").json()["id"] == job_id
