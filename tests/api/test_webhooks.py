"""A job's webhook URL at submit (the egress policy, 422 naming `webhook_url`) and the signing
secret each owner reads from GET /v1/webhooks/secret."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from janus_batch import webhooks
from janus_batch.keys import create_key
from tests.api.helpers import caption_job


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/hook", "refused by the egress policy: only https URLs"),
        ("http://example.com/hook", "refused by the egress policy: only https URLs"),
        ("https://127.0.0.1/hook", "refused by the egress policy"),
        ("https://169.254.169.254/latest", "refused by the egress policy"),
        ("https://localhost:8000/hook", "refused by the egress policy"),
        ("https:///no-host", "refused by the egress policy"),
        ("https://example.com/" + "x" * 2048, "longer than 2048"),
        ("", "must be an http(s) URL"),
    ],
)
def test_a_webhook_the_policy_refuses_is_422(client, url, message):
    items = [{"image": "s3://bucket/a.jpg"}]
    response = client.post("/v1/jobs", json={"kind": "caption", "items": items, "webhook_url": url})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "webhook_url"
    assert message in error["message"]
    assert client.get("/v1/jobs").json()["data"] == []


def test_an_accepted_webhook_is_on_the_job_object(client, set_env):
    job = caption_job(client, webhook_url="https://hooks.example.com/janus")
    assert job["webhook"] == {
        "url": "https://hooks.example.com/janus",
        "state": None,
        "attempts": 0,
        "last_attempt_at": None,
        "last_response": None,
        "last_error": None,
    }
    assert caption_job(client)["webhook"] is None
    set_env(egress_allow_http="true", egress_allow="127.20.0.0/16")  # allow-listed range
    internal = caption_job(client, webhook_url="http://127.20.1.2:8080/hook")
    assert internal["webhook"]["url"] == "http://127.20.1.2:8080/hook"


def test_the_open_mode_secret_is_made_once_in_the_data_dir(client, settings_env, set_env):
    path = Path(settings_env.data_dir) / webhooks.SECRET_FILE
    assert not path.exists()
    body = client.get("/v1/webhooks/secret").json()
    assert body["secret"].startswith("whsec_") and len(body["secret"]) > 40
    assert body["signature_header"] == "X-Janus-Signature"
    assert path.read_text().strip() == body["secret"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert client.get("/v1/webhooks/secret").json()["secret"] == body["secret"]
    set_env(webhook_secret="whsec_from-the-operator")
    assert client.get("/v1/webhooks/secret").json()["secret"] == "whsec_from-the-operator"


def test_each_key_has_its_own_secret(client, database_url, set_env):
    set_env(auth_mode="keys")
    assert client.get("/v1/webhooks/secret").status_code == 401
    keys = [create_key(database_url, name)[1] for name in ("alice", "bob")]

    def secret(key: str) -> str:
        response = client.get("/v1/webhooks/secret", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
        return str(response.json()["secret"])

    first = [secret(key) for key in keys]
    assert first[0] != first[1]
    assert [secret(key) for key in keys] == first  # made on first use, then kept


def test_signatures_verify_only_with_the_secret_and_while_fresh():
    body = b'{"type":"job.succeeded"}'
    headers = {"X-Janus-Timestamp": "1765000000"}
    headers["X-Janus-Signature"] = webhooks.sign("whsec_a", 1765000000, body)
    assert webhooks.verify("whsec_a", headers, body, now=1765000100)
    assert not webhooks.verify("whsec_b", headers, body, now=1765000100)
    assert not webhooks.verify("whsec_a", headers, body + b" ", now=1765000100)
    assert not webhooks.verify("whsec_a", headers, body, now=1765000400)  # replayed late
