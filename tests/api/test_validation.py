"""Every bad request is a 4xx naming its field, nothing is written or enqueued, and fuzzed
inputs never reach a 500 (the TestClient re-raises server errors, so a bug fails the test)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from janus_batch import jobs
from janus_batch.constants import CAPTION_QUEUE, CONTROL_QUEUE, GENERATE_QUEUE
from janus_batch.db import session_scope
from janus_batch.models import Item, Job

CAP = {"kind": "caption"}
GEN = {"kind": "generate"}
IMG = {"image": "s3://bucket/a.jpg"}

# (body, status, field); a str body is sent as raw JSON text.
CASES: list[tuple[Any, int, str]] = [
    ({"kind": "paint", "items": [IMG]}, 422, "kind"),
    ({"kind": 5, "items": [IMG]}, 422, "kind"),
    ({"items": [IMG]}, 422, "kind"),
    ({**CAP, "items": [{"image": "ftp://host/a.jpg"}]}, 422, "items[0].image"),
    ({**CAP, "items": [IMG, {"image": "just words"}]}, 422, "items[1].image"),
    ({**CAP, "items": [{"image": "s3://bucket"}]}, 422, "items[0].image"),
    ({**CAP, "items": [{"image": "http://[::1"}]}, 422, "items[0].image"),
    ({**CAP, "items": [{"image": "file_0123456789abcdef01234567"}]}, 422, "items[0].image"),
    ({**CAP, "items": [{"image": "s3://b/k", "colour": "red"}]}, 422, "items[0].colour"),
    ({**CAP, "items": [{**IMG, "prompt": ""}]}, 422, "items[0].prompt"),
    ({**CAP, "items": [{**IMG, "prompt": "   "}]}, 422, "items[0].prompt"),
    ({**CAP, "items": [{**IMG, "prompt": "x" * 51}]}, 422, "items[0].prompt"),
    ({**CAP, "items": [{**IMG, "prompt": "nul\u0000byte"}]}, 422, "items[0].prompt"),
    ({**CAP, "items": [IMG, 42]}, 422, "items[1]"),
    ({**CAP, "items": "s3://bucket/a.jpg"}, 422, "items"),
    ({**CAP, "items": []}, 422, "items"),
    ({**CAP, "items": [IMG] * 4}, 413, "items"),
    ({**CAP}, 422, "items"),
    ({**CAP, "items": [IMG], "source": {"s3_prefix": "s3://b/p/"}}, 422, "items"),
    ({**CAP, "items": [{**IMG, "custom_id": "a"}, {**IMG, "custom_id": "a"}]}, 422,
     "items[1].custom_id"),
    ({**CAP, "params": {"max_new_tokens": 0}, "items": [IMG]}, 422, "params.max_new_tokens"),
    ({**CAP, "params": {"temperature": "hot"}, "items": [IMG]}, 422, "params.temperature"),
    ({**CAP, "params": {"colour": 1}, "items": [IMG]}, 422, "params.colour"),
    ({**CAP, "params": [1, 2], "items": [IMG]}, 422, "params"),
    ({**GEN, "items": [{"prompt": "fox", "n": 0}]}, 422, "items[0].n"),
    ({**GEN, "items": [{"prompt": "fox", "n": 99}]}, 422, "items[0].n"),
    ({**GEN, "items": [{"prompt": "fox", "n": 10**40}]}, 422, "items[0].n"),
    ({**GEN, "params": {"n": 17}, "items": ["fox"]}, 422, "params.n"),
    ({**GEN, "params": {"format": "gif"}, "items": ["fox"]}, 422, "params.format"),
    ('{"kind": "generate", "params": {"cfg_weight": 1e400}, "items": ["fox"]}', 422,
     "params.cfg_weight"),
    ({**GEN, "items": [{"prompt": "fox", "seed": 2**64}]}, 422, "items[0].seed"),
    ({**GEN, "items": [{"prompt": "fox", "seed": -1}]}, 422, "items[0].seed"),
    ({**GEN, "items": [{"n": 2}]}, 422, "items[0].prompt"),
    ({**GEN, "items": [{"prompt": None}]}, 422, "items[0].prompt"),
    ('{"kind": "generate", "items": [{"prompt": "fox", "custom_id": "\\ud800"}]}', 422,
     "items[0].custom_id"),
    ('{"kind": "caption", "items": [{"image": "s3://b/\\udfff.jpg"}]}', 422, "items[0].image"),
    ('{"kind": "caption", "source": {"manifest": "s3://b/\\ud800"}}', 422, "source.manifest"),
    ('{"kind": "generate", "items": [{"prompt": "fox", "temperature": NaN}]}', 422,
     "items[0].temperature"),
    ('{"kind": "generate", "items": [{"prompt": "fox", "cfg_weight": Infinity}]}', 422,
     "items[0].cfg_weight"),
    ({**GEN, "source": {"s3_prefix": "s3://b/p/"}}, 422, "source.s3_prefix"),
    ({**CAP, "source": {"s3_prefix": "https://b/p/"}}, 422, "source.s3_prefix"),
    ({**CAP, "source": {"manifest": "ftp://host/m.jsonl"}}, 422, "source.manifest"),
    ({**CAP, "source": {"manifest": "file_0123456789abcdef01234567"}}, 422, "source.manifest"),
    ({**CAP, "source": {"manifest": ""}}, 422, "source.manifest"),
    ({**CAP, "source": {}}, 422, "source"),
    ({**CAP, "source": {"manifest": "s3://b/m", "s3_prefix": "s3://b/"}}, 422, "source"),
    ({**CAP, "source": {"bucket": "b"}}, 422, "source.bucket"),
    ({**CAP, "source": "s3://b/m.jsonl"}, 422, "source"),
    ({**CAP, "items": [IMG], "priority": 101}, 422, "priority"),
    ({**CAP, "items": [IMG], "priority": "high"}, 422, "priority"),
    ({**CAP, "items": [IMG], "urgency": 1}, 422, "urgency"),
    ('{"kind": "caption", "items": [{"image": "s3://b/k"}], "\\ud800": 1}', 422, "body"),
    ('{"kind": "caption", "params": {"\\udc00": 1}, "items": ["s3://b/k"]}', 422,
     "params"),
    ("[1, 2, 3]", 422, "body"),
    ('{"kind": "caption", "items": [', 422, "body"),
    ("", 422, "body"),
    ("null", 422, "body"),
]  # fmt: skip


@pytest.fixture
def strict_client(client, set_env):
    set_env(max_inline_items="3", max_prompt_chars="50")
    return client


def _counts(database_url: str) -> tuple[int, int]:
    with session_scope(database_url) as session:
        return (
            session.scalar(select(func.count()).select_from(Job)),
            session.scalar(select(func.count()).select_from(Item)),
        )


def test_bad_job_requests_name_their_field(strict_client, database_url, queue_len):
    for body, status, field in CASES:
        if isinstance(body, str):
            response = strict_client.post(
                "/v1/jobs", content=body, headers={"content-type": "application/json"}
            )
        else:
            response = strict_client.post("/v1/jobs", json=body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["field"] == field, (body, error)
        assert error["message"]
    assert _counts(database_url) == (0, 0)
    for queue in (CAPTION_QUEUE, GENERATE_QUEUE, CONTROL_QUEUE):
        assert queue_len(queue) == 0


def test_non_json_bodies_and_bad_headers(client):
    cases = [
        (b"kind=caption&items=x", "application/x-www-form-urlencoded"),
        (b"\xff\xfe\x00garbage", "application/octet-stream"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"<xml/>", "text/xml"),
    ]
    for content, content_type in cases:
        response = client.post("/v1/jobs", content=content, headers={"content-type": content_type})
        assert 400 <= response.status_code < 500, (content, response.text)
        assert response.json()["error"]["field"] == "body"
    too_long = client.post(
        "/v1/jobs", json={**GEN, "items": ["fox"]}, headers={"Idempotency-Key": "k" * 300}
    )
    assert too_long.status_code == 422
    assert too_long.json()["error"]["field"] == "idempotency-key"


def test_bad_query_and_path_parameters(client):
    job_id = client.post("/v1/jobs", json={**GEN, "items": ["fox"]}).json()["id"]
    cases = [
        ("/v1/jobs?limit=0", 422, "limit"),
        ("/v1/jobs?limit=101", 422, "limit"),
        ("/v1/jobs?limit=abc", 422, "limit"),
        ("/v1/jobs?after=not-a-cursor", 422, "after"),
        ("/v1/jobs?after=W10", 422, "after"),
        ("/v1/jobs?status=done", 422, "status"),
        ("/v1/jobs?kind=paint", 422, "kind"),
        ("/v1/jobs/job_0123456789abcdef01234567", 404, "job_id"),
        ("/v1/jobs/%00", 404, "job_id"),
        ("/v1/jobs/nope%F0%9F%A6%8A", 404, "job_id"),
        (f"/v1/jobs/{job_id}/items?after=-2", 422, "after"),
        (f"/v1/jobs/{job_id}/items?after=99999999999999999999", 422, "after"),
        (f"/v1/jobs/{job_id}/items?limit=5000", 422, "limit"),
        (f"/v1/jobs/{job_id}/items?status=weird", 422, "status"),
        (f"/v1/jobs/{job_id}/results?errors=maybe", 422, "errors"),
        (f"/v1/jobs/{job_id}/files/images/%00.png", 422, "key"),
        (f"/v1/jobs/{job_id}/files/images/missing.png", 404, "key"),
        ("/v1/files?sha256=xyz", 422, "sha256"),
        ("/v1/files", 422, "sha256"),
        ("/v1/files/file_nope", 404, "file_id"),
        ("/v1/nothing-here", 404, None),
    ]
    for url, status, field in cases:
        response = client.get(url)
        assert response.status_code == status, (url, response.text)
        assert response.json()["error"]["field"] == field, (url, response.json())
    assert client.post("/v1/jobs/job_0123456789abcdef01234567/cancel").status_code == 404
    assert client.delete("/v1/jobs").status_code == 405


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    choices: list[Any] = [
        None, True, False, 0, -1, 2**31, 2**63, 10**30, -(10**30), 1.5, -0.0, 1e308,
        "", " ", "caption", "generate", "s3://b/k.jpg", "https://example.com/x.png",
        "file_0123456789abcdef01234567", "\u0000", "\U0001f98a fox", "\u202e\u200b",
        "x" * 5000, "ü" * 40, "job_0123456789abcdef01234567", "s3://", "https://",
    ]  # fmt: skip
    if depth < 2:
        choices += [
            [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))],
            {rng.choice(["prompt", "image", "n", "seed", "custom_id", "x", "manifest",
                         "s3_prefix", "cfg_weight", "temperature", "format"]):
             _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))},
        ]  # fmt: skip
    return rng.choice(choices)


def _mutate(rng: random.Random) -> Any:
    base: dict[str, Any] = rng.choice(
        [
            {"kind": "caption", "items": [{"image": "s3://b/a.jpg", "prompt": "hi"}]},
            {"kind": "generate", "params": {"n": 2}, "items": [{"prompt": "fox", "seed": 1}]},
            {"kind": "caption", "source": {"s3_prefix": "s3://b/p/"}},
            {"kind": "generate", "source": {"manifest": "s3://b/m.jsonl"}},
        ]
    )
    base = json.loads(json.dumps(base))
    for _ in range(rng.randint(1, 3)):
        target = base
        path = rng.choice([[], ["params"], ["items", 0], ["source"]])
        for step in path:
            try:
                target = target[step]
            except (KeyError, IndexError, TypeError):
                break
        if isinstance(target, dict):
            key = rng.choice(
                [*target.keys(), "kind", "items", "source", "params", "n", "prompt", "image"]
            )
            if rng.random() < 0.15:
                target.pop(key, None)
            else:
                target[key] = _random_value(rng)
        elif isinstance(target, list):
            target.append(_random_value(rng))
    return base


def test_fuzzed_job_bodies_never_500(client, database_url):
    rng = random.Random(20261122)
    statuses: dict[int, int] = {}
    for _ in range(250):
        body = _mutate(rng)
        response = client.post("/v1/jobs", json=body)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in (200, 202, 413, 422), (body, response.text)
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["message"] and "field" in error, body
    assert statuses.get(422, 0) > 50  # most mutations are invalid
    assert statuses.get(202, 0) > 5  # and some survive


def test_fuzzed_raw_bodies_never_500(client):
    rng = random.Random(7)
    for _ in range(60):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        for content_type in ("application/json", "text/plain", "multipart/form-data"):
            response = client.post("/v1/jobs", content=raw, headers={"content-type": content_type})
            assert 400 <= response.status_code < 500, (raw, response.text)
    for raw in (b"\x00" * 10, b'{"kind": "caption", "items": [{"image": "s3://b/\\u0000"}]}'):
        headers = {"content-type": "multipart/form-data; boundary=x"}
        response = client.post("/v1/files", content=raw, headers=headers)
        assert 400 <= response.status_code < 500, response.text


def test_unexpected_errors_are_logged_500s(settings_env, monkeypatch, caplog):
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(jobs, "list_jobs", broken)
    with TestClient(create_app(), raise_server_exceptions=False) as test_client:
        response = test_client.get("/v1/jobs")
    assert response.status_code == 500
    assert response.json()["error"]["message"].startswith("internal server error")
    assert "boom" not in response.text
    assert any("RuntimeError: boom" in (r.exc_text or "") for r in caplog.records)
