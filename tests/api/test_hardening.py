"""HTTP hardening of the JSON API (`api/hardening.py`): user content is a download that runs
no script on the API's origin, every answer says nosniff, and a browser on another site
cannot make state-changing calls."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from api.downloads import content_disposition
from tests.api.helpers import caption_job, finish_items, set_job

HOSTILE = {
    "page.html": b"<html><script>alert(document.cookie)</script></html>",
    "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    "cat.png": b"\x89PNG\r\n\x1a\n<html><script>alert(1)</script>",  # not decoded here
}


def _csp(response) -> str:
    return response.headers.get("content-security-policy", "")


def _assert_confined(response) -> None:
    """nosniff, and a policy under which nothing loads and nothing runs."""
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = _csp(response)
    assert "default-src 'none'" in policy and "sandbox" in policy, policy
    assert "script-src" not in policy


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_uploads_are_served_as_attachments(client, name):
    upload = client.post(
        "/v1/files", files={"file": (name, HOSTILE[name])}, data={"purpose": "image"}
    )
    assert upload.status_code == 201, upload.text
    content = client.get(f"/v1/files/{upload.json()['id']}/content")
    assert content.status_code == 200 and content.content == HOSTILE[name]
    assert content.headers["content-disposition"] == f'attachment; filename="{name}"'
    _assert_confined(content)


def test_no_file_name_can_break_the_disposition_header():
    for name in ('a"b;.txt', "ünï.png", "x\r\nSet-Cookie: a=b"):
        header = content_disposition("text/plain", name, inline=False)
        assert header.startswith("attachment; filename*=utf-8''"), header
        assert not any(c in header.removeprefix("attachment; ") for c in '"\r\n;')
    assert content_disposition("image/png", "a.png", inline=True) == 'inline; filename="a.png"'
    assert content_disposition("image/svg+xml", None, inline=True) == "attachment"


def test_results_and_outputs(client, settings_env, database_url):
    job = caption_job(client, n=2)
    finish_items(database_url, job["id"], [0, 1], result={"caption": "<script>x</script>"})
    results = client.get(f"/v1/jobs/{job['id']}/results")
    assert results.status_code == 200 and "<script>" in results.text
    assert results.headers["content-disposition"].startswith("attachment")
    _assert_confined(results)

    set_job(database_url, job["id"], status="succeeded")
    folder = Path(urlsplit(job["output"]["prefix"]).path)
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "00000000_0.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "results.jsonl").write_text('{"caption": "<script>x</script>"}\n')
    image = client.get(f"/v1/jobs/{job['id']}/files/images/00000000_0.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.headers["content-disposition"] == "inline"  # an image we wrote ourselves
    _assert_confined(image)
    manifest = client.get(f"/v1/jobs/{job['id']}/files/results.jsonl")
    assert manifest.status_code == 200
    assert manifest.headers["content-disposition"] == "attachment"
    _assert_confined(manifest)


def test_every_answer_says_nosniff(client):
    for path in ("/healthz", "/v1/jobs", "/v1/jobs/job_nope", "/no-such-route", "/openapi.json"):
        response = client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert "default-src 'none'" in _csp(response), path
    docs = client.get("/docs")  # Swagger UI loads its code from a CDN: no CSP there
    assert docs.status_code == 200 and docs.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in docs.headers


SUBMIT = {"kind": "generate", "items": ["a fox"]}


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "http://testserver:8080"},  # same host, another port: another origin
        {"Origin": "null"},  # a sandboxed page, or one that hides where it is
        {"Referer": "https://evil.example/page"},
    ],
)
def test_a_cross_site_post_is_refused(client, headers):
    response = client.post("/v1/jobs", json=SUBMIT, headers=headers)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["field"] == next(iter(headers))
    assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/v1/jobs").json()["data"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, the CLI
        {"Origin": "http://testserver"},
        {"Origin": "https://testserver"},  # TLS ends at a proxy in front
        {"Referer": "http://testserver/ui/jobs/job_1"},
    ],
)
def test_a_same_site_or_non_browser_post_passes(client, headers):
    assert client.post("/v1/jobs", json=SUBMIT, headers=headers).status_code == 202
