"""POST /v1/files: stored under inputs/<owner>/<sha256>/, deduplicated by content, 413 over
the limit, manifests checked line by line; GET /v1/files?sha256= finds an earlier upload."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import func, select

from janus_batch.db import session_scope
from janus_batch.models import File


def _upload(client, name: str, data: bytes, purpose: str = "image"):
    return client.post("/v1/files", files={"file": (name, data)}, data={"purpose": purpose})


def _file_rows(database_url: str) -> int:
    with session_scope(database_url) as session:
        return session.scalar(select(func.count()).select_from(File))


def test_upload_stores_and_deduplicates(client, settings_env, database_url):
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10
    sha = hashlib.sha256(data).hexdigest()
    first = _upload(client, "../../etc/cat photo.png", data)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["id"].startswith("file_")
    assert body["filename"] == "cat_photo.png"
    assert body["bytes"] == len(data)
    assert body["sha256"] == sha
    assert body["purpose"] == "image"
    stored = Path(settings_env.resolved_storage_url()) / "inputs" / "local" / sha / "cat_photo.png"
    assert stored.read_bytes() == data

    again = _upload(client, "renamed.png", data)
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]
    assert _file_rows(database_url) == 1

    found = client.get("/v1/files", params={"sha256": sha}).json()["data"]
    assert [f["id"] for f in found] == [body["id"]]
    assert client.get("/v1/files", params={"sha256": "0" * 64}).json() == {"data": []}
    assert client.get(f"/v1/files/{body['id']}").json()["sha256"] == sha

    content = client.get(f"/v1/files/{body['id']}/content")
    assert content.status_code == 200
    assert content.content == data
    assert content.headers["content-type"] == "image/png"
    missing = client.get("/v1/files/file_000000000000000000000000/content")
    assert missing.status_code == 404
    assert missing.json()["error"]["field"] == "file_id"


def test_oversized_upload_is_413(client, set_env, database_url, settings_env):
    set_env(max_upload_bytes="1000")
    counted = _upload(client, "big.png", b"x" * 1001)  # caught while counting
    assert counted.status_code == 413
    assert counted.json()["error"]["field"] == "file"
    assert "1,000-byte upload limit" in counted.json()["error"]["message"]

    early = _upload(client, "huge.png", b"x" * 200_000)  # refused from Content-Length
    assert early.status_code == 413
    assert early.json()["error"]["field"] == "file"

    assert _upload(client, "ok.png", b"x" * 1000).status_code == 201
    assert _file_rows(database_url) == 1
    inputs = Path(settings_env.resolved_storage_url()) / "inputs"
    assert len([p for p in inputs.rglob("*") if p.is_file()]) == 1


def test_manifest_uploads_are_checked_line_by_line(client, database_url):
    good = b'{"prompt": "a cat"}\n\n"a dog"\n{"prompt": "a cow", "n": 2}\n'
    assert _upload(client, "m.jsonl", good, "manifest").status_code == 201

    bad = b'{"prompt": "a"}\n{"prompt": "b"}\n\n{"prompt": "c",}\n'
    response = _upload(client, "bad.jsonl", bad, "manifest")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "file"
    assert "manifest line 4: invalid JSON (" in error["message"]

    latin1 = _upload(client, "l.jsonl", b'"ok"\n"caf\xe9"\n', "manifest")
    assert latin1.status_code == 422 and "manifest line 2: is not UTF-8" in latin1.text
    deep = _upload(client, "d.jsonl", b'"ok"\n' + b"[" * 100_000 + b"]" * 100_000, "manifest")
    assert (
        deep.status_code == 422 and "manifest line 2: invalid JSON (nested too deeply)" in deep.text
    )
    huge = _upload(client, "h.jsonl", b'{"seed": ' + b"9" * 5000 + b"}\n", "manifest")
    assert huge.status_code == 422 and "manifest line 1: invalid JSON (" in huge.text
    blank = _upload(client, "e.jsonl", b"\n\n  \n", "manifest")
    assert blank.status_code == 422 and "no entries" in blank.text
    assert _file_rows(database_url) == 1


def test_bad_upload_requests(client, database_url):
    cases = [
        (client.post("/v1/files", files={"file": ("a.png", b"x")}), "purpose"),
        (client.post("/v1/files", files={"file": ("a.png", b"x")}, data={"purpose": "x"}),
         "purpose"),
        (client.post("/v1/files", data={"purpose": "image"}), "file"),
        (client.post("/v1/files", json={"purpose": "image"}), "file"),
        (_upload(client, "empty.png", b""), "file"),
    ]  # fmt: skip
    for response, field in cases:
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field
    assert _file_rows(database_url) == 0


def test_image_file_purpose_is_checked_when_used(client):
    manifest_id = _upload(client, "m.jsonl", b'"s3://b/a.jpg"\n', "manifest").json()["id"]
    image_id = _upload(client, "a.png", b"png bytes").json()["id"]
    wrong_item = client.post("/v1/jobs", json={"kind": "caption", "items": [manifest_id]})
    assert wrong_item.status_code == 422
    assert wrong_item.json()["error"]["field"] == "items[0].image"
    assert "uploaded as manifest" in wrong_item.json()["error"]["message"]
    wrong_source = client.post(
        "/v1/jobs", json={"kind": "caption", "source": {"manifest": image_id}}
    )
    assert wrong_source.status_code == 422
    assert wrong_source.json()["error"]["field"] == "source.manifest"
