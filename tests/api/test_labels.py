"""A job's label and metadata: stored, returned everywhere, filterable, validated (422 naming
the field), part of an Idempotency-Key's request, and the label names its chunks in Flower."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from tests.api.helpers import caption_job

META = {"team": "vision", "run": "2026-12-03", "ticket": "JB-11 ✓"}


def test_label_and_metadata_are_returned_everywhere(client):
    job = caption_job(client, label="nightly crawl", metadata=META)
    assert (job["label"], job["metadata"]) == ("nightly crawl", META)
    assert client.get(f"/v1/jobs/{job['id']}").json()["metadata"] == META
    [listed] = client.get("/v1/jobs").json()["data"]
    assert (listed["label"], listed["metadata"]) == ("nightly crawl", META)

    plain = caption_job(client)
    assert (plain["label"], plain["metadata"]) == (None, {})


def test_jobs_are_filtered_by_label(client):
    a = caption_job(client, label="alpha")
    b = caption_job(client, label="beta")
    a2 = caption_job(client, label="alpha")
    caption_job(client)

    def ids(**params: Any) -> list[str]:
        return [j["id"] for j in client.get("/v1/jobs", params=params).json()["data"]]

    assert ids(label="alpha") == [a2["id"], a["id"]]
    assert ids(label="beta") == [b["id"]]
    assert ids(label="gamma") == []
    page = client.get("/v1/jobs", params={"label": "alpha", "limit": 1}).json()
    assert page["has_more"]
    rest = client.get("/v1/jobs", params={"label": "alpha", "after": page["next_cursor"]})
    assert [j["id"] for j in rest.json()["data"]] == [a["id"]]


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ({"label": ""}, "label", "must not be empty"),
        ({"label": "x" * 129}, "label", "longer than 128"),
        ({"label": "two\nlines"}, "label", "one line"),
        ({"label": 7}, "label", "valid string"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "at most 16"),
        ({"metadata": {"n": 3}}, "metadata.n", "must be a string"),
        ({"metadata": {"long": "v" * 513}}, "metadata.long", "longer than 512"),
        ({"metadata": {"k" * 65: "v"}}, "metadata", "1 to 64 characters"),
        ({"metadata": {"": "v"}}, "metadata", "1 to 64 characters"),
        ({"metadata": {"nul": "a\x00b"}}, "metadata.nul", "NUL"),
        ({"metadata": ["a", "b"]}, "metadata", "valid dictionary"),
    ],
)
def test_bad_labels_and_metadata_are_422_naming_the_field(client, extra, field, message):
    items = [{"image": "s3://bucket/a.jpg"}]
    response = client.post("/v1/jobs", json={"kind": "caption", "items": items, **extra})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["field"], message in error["message"]) == (field, True), error
    assert client.get("/v1/jobs").json()["data"] == []


def test_label_and_metadata_count_in_an_idempotent_replay(client):
    body = {"kind": "caption", "items": [{"image": "s3://bucket/a.jpg"}], "label": "x"}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", json={**body, "label": "y"}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 422
    assert other.json()["error"]["field"] == "Idempotency-Key"


def test_chunks_of_a_labelled_job_carry_it_as_their_flower_name(client, redis_url, queue_prefix):
    caption_job(client, label="nightly crawl")
    caption_job(client)
    conn = redis.Redis.from_url(redis_url)
    try:
        raw = conn.lrange(queue_prefix + "janus.caption", 0, -1)
    finally:
        conn.close()
    messages = [json.loads(m) for m in reversed(raw)]
    named = [(m["headers"]["task"], m["headers"].get("shadow")) for m in messages]
    assert named == [
        ("janus.caption_chunk", "janus.caption_chunk nightly crawl"),
        ("janus.caption_chunk", None),
    ]
    args = [json.loads(base64.b64decode(m["body"]))[0] for m in messages]
    assert all(len(a) == 2 for a in args)  # still ids only
