"""The OpenAPI document says what the API answers: every status code observed for a
representative bad (or repeated) request is documented for its route, every documented 4xx
has the API's one error shape, and a body that cannot be read at all is a 400 naming `body`."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.api.helpers import caption_job, set_job

JSON = {"Content-Type": "application/json"}
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorBody"}
UNREADABLE = {
    "invalid UTF-8": b'{"kind": "generate", "items": ["caf\xe9 \xff"]}',
    "nested too deeply": b'{"kind": "generate", "params": {"x": ' + b"[" * 5000 + b"]" * 5000,
    "a huge integer": b'{"kind": "generate", "items": [{"prompt": "a", "seed": 1'
    + b"0" * 5000
    + b"}]}",
}


@pytest.mark.parametrize("what", sorted(UNREADABLE))
def test_an_unreadable_json_body_is_a_400_naming_body(client, what):
    response = client.post("/v1/jobs", content=UNREADABLE[what], headers=JSON)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "body" and error["message"].startswith("body: "), error


def test_malformed_multipart_is_a_400_naming_body(client):
    response = client.post(
        "/v1/files",
        content=b"--not-the-boundary\r\n\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "body"


def _operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    operation = doc["paths"].get(path, {}).get(method.lower())
    assert operation is not None, f"{method} {path} is not in the OpenAPI document"
    return operation


def _documented(doc: dict[str, Any], method: str, path: str) -> set[int]:
    return {int(code) for code in _operation(doc, method, path)["responses"]}


def _probes(client, set_env, database_url) -> list[tuple[str, str, int]]:
    """(method, route template, observed status) for representative requests."""
    seen: list[tuple[str, str, int]] = []

    def probe(method: str, template: str, url: str | None = None, **kwargs: Any) -> Any:
        response = client.request(method, url or template, **kwargs)
        assert response.status_code < 500, (method, url or template, response.text)
        seen.append((method, template, response.status_code))
        return response

    upload = {"files": {"file": ("a.png", b"\x89PNG 1")}, "data": {"purpose": "image"}}
    assert probe("POST", "/v1/files", **upload).status_code == 201
    assert probe("POST", "/v1/files", **upload).status_code == 200  # the same bytes again
    probe("POST", "/v1/files", files={"file": ("a.png", b"x")}, data={"purpose": "nope"})
    probe("POST", "/v1/files", data={"purpose": "image"})
    probe("POST", "/v1/files", content=b"junk", headers={"Content-Type": "multipart/form-data"})
    probe(
        "POST",
        "/v1/files",
        content=b"--x\r\n\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    probe("POST", "/v1/files", headers={"Origin": "https://evil.example"}, **upload)
    probe("GET", "/v1/files", "/v1/files?sha256=zz")
    probe("GET", "/v1/files/{file_id}", "/v1/files/file_nope")
    probe("GET", "/v1/files/{file_id}/content", "/v1/files/file_nope/content")

    for body in UNREADABLE.values():
        probe("POST", "/v1/jobs", content=body, headers=JSON)
    probe("POST", "/v1/jobs", content=b'{"kind": ', headers=JSON)
    probe("POST", "/v1/jobs", json={"kind": "nope", "items": ["a"]})
    probe("POST", "/v1/jobs", json={"kind": "generate", "items": ["a"], "params": {"n": 99}})
    probe("POST", "/v1/jobs", json=[1, 2])
    probe("POST", "/v1/jobs", json={"kind": "generate"}, headers={"Referer": "http://x.test/"})
    job = caption_job(client, n=1)
    replay = {"kind": "generate", "items": ["a"]}
    for _ in range(2):
        probe("POST", "/v1/jobs", json=replay, headers={"Idempotency-Key": "k1"})
    probe("GET", "/v1/jobs", "/v1/jobs?limit=0")
    probe("GET", "/v1/jobs", "/v1/jobs?after=not-a-cursor")
    probe("GET", "/v1/jobs", "/v1/jobs?status=nope")
    probe("GET", "/v1/jobs/{job_id}", "/v1/jobs/job_nope")
    probe("GET", "/v1/jobs/{job_id}/items", f"/v1/jobs/{job['id']}/items?after=x")
    probe("GET", "/v1/jobs/{job_id}/results", "/v1/jobs/job_nope/results")
    probe("GET", "/v1/jobs/{job_id}/files/{key}", f"/v1/jobs/{job['id']}/files/a/../../b")
    probe("GET", "/v1/jobs/{job_id}/files/{key}", f"/v1/jobs/{job['id']}/files/nothing.png")
    probe("POST", "/v1/jobs/{job_id}/cancel", "/v1/jobs/job_nope/cancel")
    set_job(database_url, job["id"], status="succeeded")
    probe("POST", "/v1/jobs/{job_id}/cancel", f"/v1/jobs/{job['id']}/cancel")

    set_env(max_inline_items="2", max_upload_bytes="10")
    probe("POST", "/v1/jobs", json={"kind": "generate", "items": ["a", "b", "c"]})
    probe("POST", "/v1/files", files={"file": ("b.png", b"x" * 100)}, data={"purpose": "image"})
    set_env(auth_mode="keys")
    probe("GET", "/v1/jobs")
    probe("POST", "/v1/files", headers={"Authorization": "Basic x"}, **upload)
    return seen


def test_every_observed_status_is_documented(client, set_env, database_url):
    doc = client.get("/openapi.json").json()
    seen = _probes(client, set_env, database_url)
    codes = {code for *_, code in seen}
    assert {200, 201, 202, 400, 401, 403, 404, 409, 413, 422} <= codes, sorted(codes)
    missing = [
        (method, path, code)
        for method, path, code in seen
        if code not in _documented(doc, method, path)
    ]
    assert missing == [], missing


def test_every_documented_error_has_the_error_shape(client):
    doc = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            for code, response in responses.items():
                if code.startswith("4"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == ERROR_SCHEMA, (method, path, code)
            if "requestBody" in operation:
                assert {"400", "422"} <= set(responses), (method, path)
            if method in ("post", "put", "patch", "delete"):
                assert "403" in responses, (method, path)
    upload = doc["paths"]["/v1/files"]["post"]["responses"]
    assert {"200", "201"} <= set(upload)
    assert upload["200"]["content"] == upload["201"]["content"]


def test_every_route_answers_a_blind_request_as_documented(client, set_env):
    """Each operation, called with unknown ids and nothing else, in open and keys mode."""
    doc = client.get("/openapi.json").json()
    missing = []
    for mode in ("open", "keys"):
        set_env(auth_mode=mode)
        for path, item in doc["paths"].items():
            url = re.sub(r"\{[^}]+\}", "nope", path)
            for method in item:
                response = client.request(method.upper(), url)
                assert response.status_code < 500, (method, url, response.text)
                if response.status_code not in _documented(doc, method, path):
                    missing.append((mode, method, path, response.status_code))
    assert missing == [], missing
