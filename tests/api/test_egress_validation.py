"""POST /v1/jobs holds http(s) references to the egress policy as far as the URL alone tells
(no DNS in the API): plain http:// unless allowed, literal internal addresses and loopback
names unless allow-listed; a 422 names the field, nothing is written or enqueued."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from janus_batch.constants import CAPTION_QUEUE, CONTROL_QUEUE
from janus_batch.db import session_scope
from janus_batch.models import Job

CAP = {"kind": "caption"}
GEN = {"kind": "generate"}


def _jobs(database_url: str) -> int:
    with session_scope(database_url) as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def _refused(client: Any, body: dict[str, Any], field: str) -> str:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert "refused by the egress policy" in error["message"]
    return str(error["message"])


def test_plain_http_is_refused_unless_allowed(client, set_env, database_url, queue_len):
    image = "http://images.example.com/cat.jpg"
    message = _refused(client, {**CAP, "items": ["s3://b/a.jpg", image]}, "items[1].image")
    assert message == (
        f"items[1].image: '{image}' is refused by the egress policy: only https URLs are fetched"
    )
    manifest = {**GEN, "source": {"manifest": "http://example.com/prompts.jsonl"}}
    _refused(client, manifest, "source.manifest")
    assert _jobs(database_url) == 0
    assert queue_len(CAPTION_QUEUE) == 0 and queue_len(CONTROL_QUEUE) == 0

    set_env(egress_allow_http="true")
    assert client.post("/v1/jobs", json={**CAP, "items": [image]}).status_code == 202
    assert client.post("/v1/jobs", json=manifest).status_code == 202
    assert _jobs(database_url) == 2


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:6379", "localhost", "[::1]", "169.254.169.254", "[fd00:ec2::254]", "0.0.0.0",
        "10.0.0.8", "192.168.1.20", "100.64.0.1", "[::ffff:127.0.0.1]", "2130706433",
    ],
)  # fmt: skip
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_internal_hosts_are_refused_at_submit(client, database_url, host):
    url = f"https://{host}/latest/meta-data/x.png"
    message = _refused(client, {**CAP, "items": [{"image": url}]}, "items[0].image")
    assert message.startswith(f"items[0].image: '{url}' is refused by the egress policy: ")
    _refused(client, {**CAP, "source": {"manifest": url}}, "source.manifest")
    assert _jobs(database_url) == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_allow_listed_hosts_are_accepted(client, set_env, database_url):
    set_env(egress_allow="minio.internal:9000,10.20.0.0/16")
    for image in ("https://minio.internal:9000/b/cat.jpg", "https://10.20.3.4/cat.jpg"):
        response = client.post("/v1/jobs", json={**CAP, "items": [image]})
        assert response.status_code == 202, response.text
    _refused(client, {**CAP, "items": ["https://10.30.0.1/cat.jpg"]}, "items[0].image")
    set_env(egress_allow="10.20.0.0/16:443")  # a network on one port only
    assert client.post("/v1/jobs", json={**CAP, "items": ["https://10.20.3.4/a.jpg"]}).is_success
    _refused(client, {**CAP, "items": ["https://10.20.3.4:8443/a.jpg"]}, "items[0].image")
    # a host name is resolved by the worker when it connects (tests/security/test_egress.py):
    # the API, which resolves nothing, lets it through
    assert client.post("/v1/jobs", json={**CAP, "items": ["https://a.example/x.jpg"]}).is_success
