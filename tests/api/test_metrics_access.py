"""Who may read GET /metrics: anyone by default, but then it shows totals only (no label
names a key, an owner or a job); with JANUS_BATCH_METRICS_TOKEN set, only that bearer token."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from janus_batch import keys
from tests.api.helpers import caption_job

TOKEN = "scrape-secret-0123456789"


def _labels(text: str) -> set[tuple[str, str]]:
    return {
        (name, value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for name, value in sample.labels.items()
    }


def test_open_metrics_name_no_tenant(client, set_env, database_url):
    set_env(auth_mode="keys")
    tenants = [keys.create_key(database_url, name) for name in ("alice", "bob")]
    for row, secret in tenants:
        client.headers["Authorization"] = f"Bearer {secret}"
        job = caption_job(client, n=2)
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
        upload = client.post(
            "/v1/files",
            files={"file": (f"{row.name}.png", b"\x89PNG" + row.id.encode())},
            data={"purpose": "image"},
        )
        assert upload.status_code == 201

    del client.headers["Authorization"]
    scrape = client.get("/metrics")  # no key at all
    assert scrape.status_code == 200
    assert "janus_api_jobs_submitted_total" in scrape.text
    names = {name for name, _ in _labels(scrape.text)}
    assert names <= {"kind", "status", "purpose", "outcome", "method", "route"} | {
        "version", "implementation", "major", "minor", "patchlevel", "generation", "le"
    }  # fmt: skip
    for row, secret in tenants:
        for private in (row.id, row.name, secret, row.prefix):
            assert private not in scrape.text


def test_a_metrics_token_guards_metrics(client, set_env):
    set_env(metrics_token=TOKEN)
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.json()["error"]["field"] == "Authorization"
    assert "janus_" not in anonymous.text
    for wrong in ("Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN):
        assert client.get("/metrics", headers={"Authorization": wrong}).status_code == 401
    scrape = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert scrape.status_code == 200 and "janus_jobs" in scrape.text
    assert client.get("/healthz").status_code == 200  # nothing else needs it
