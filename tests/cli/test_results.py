"""Caption sidecars from uploaded images, on a canned API (httpx.MockTransport): fetched
through GET /v1/files/{id}/content where the API serves it, else one clear error."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from janus_batch.client.cli.common import UsageError
from janus_batch.client.cli.results import caption_outputs
from janus_batch.client.http import Client

LINES = [
    {"idx": 0, "custom_id": "a.png", "input": {"image": "file_a"}, "caption": "an apple"},
    {"idx": 1, "custom_id": "sub/b.jpg", "input": {"image": "file_b"}, "caption": "a bee"},
]


def api(served: bool, calls: list[str]) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if served and request.url.path.endswith("/content"):
            return httpx.Response(200, content=request.url.path.encode())
        return httpx.Response(404, json={"error": {"message": "Not Found"}})

    return Client("http://api.test", transport=httpx.MockTransport(handler))


def test_uploaded_inputs_are_fetched_and_captioned(tmp_path: Path) -> None:
    calls: list[str] = []
    with api(True, calls) as client:
        failed = caption_outputs(
            client, {}, LINES, tmp_path, sidecars=True, images_dir=None, workers=2
        )
    assert failed == 0
    assert (tmp_path / "images" / "a.png").read_bytes() == b"/v1/files/file_a/content"
    assert (tmp_path / "images" / "sub" / "b.txt").read_text() == "a bee"
    assert sorted(calls) == ["/v1/files/file_a/content", "/v1/files/file_b/content"]

    calls.clear()
    with api(True, calls) as client:
        caption_outputs(client, {}, LINES, tmp_path, sidecars=True, images_dir=None, workers=2)
    assert calls == []  # resumed: nothing fetched again


def test_an_api_without_the_content_route_asks_for_images_once(tmp_path: Path) -> None:
    calls: list[str] = []
    with api(False, calls) as client, pytest.raises(UsageError, match="pass --images DIR"):
        caption_outputs(client, {}, LINES, tmp_path, sidecars=True, images_dir=None, workers=2)
    assert calls == ["/v1/files/file_a/content"]
    assert (tmp_path / "captions.csv").is_file()
    assert not (tmp_path / "images" / "a.txt").exists()
