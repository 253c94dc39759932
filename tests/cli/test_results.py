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


def test_generated_images_come_straight_from_storage_by_their_presigned_urls(
    tmp_path: Path,
) -> None:
    """A result line's presigned url is used (the API is not in the download path); one
    that no longer works (expired: 403) falls back to the API's route for that output."""
    from janus_batch.client.cli.results import generate_outputs

    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.url.host}{request.url.path}")
        if request.url.host == "s3.test":
            ok = "expired" not in request.url.path
            return httpx.Response(200 if ok else 403, content=b"png from s3" if ok else b"no")
        return httpx.Response(200, content=b"png from the api")

    images = [
        {"key": "jobs/j/images/00000000_0.png", "seed": 1, "index": 0,
         "url": "http://s3.test/b/jobs/j/images/00000000_0.png?X-Amz-Signature=x"},
        {"key": "jobs/j/images/00000000_1.png", "seed": 2, "index": 1,
         "url": "http://s3.test/b/expired/00000000_1.png?X-Amz-Signature=y"},
        {"key": "jobs/j/images/00000000_2.png", "seed": 3, "index": 2},  # local storage: no url
    ]  # fmt: skip
    lines = [{"idx": 0, "input": {"prompt": "a fox"}, "images": images}]
    with Client("http://api.test", transport=httpx.MockTransport(handler)) as client:
        failed = generate_outputs(client, {"id": "j"}, lines, tmp_path, sidecars=False, workers=1)
    assert failed == 0
    got = {p.name: p.read_bytes() for p in (tmp_path / "images").iterdir()}
    assert got == {
        "00000000_0.png": b"png from s3",
        "00000000_1.png": b"png from the api",  # the expired URL's fallback
        "00000000_2.png": b"png from the api",
    }
    assert "api.test/v1/jobs/j/files/jobs/j/images/00000000_0.png" not in calls


def test_a_job_writing_shards_downloads_each_shard_once_and_unpacks_it(tmp_path: Path) -> None:
    import csv
    import io
    import json
    import tarfile

    from janus_batch.client.cli.results import generate_outputs

    def shard(first: int) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for idx in (first, first + 1):
                meta = json.dumps({"prompt": f"p{idx}"}).encode()
                for name, data in ((f"{idx:08d}_0.png", b"png %d" % idx),
                                   (f"{idx:08d}_0.json", meta)):  # fmt: skip
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return out.getvalue()

    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, content=shard(int(request.url.path[-12:-6])))

    def line(idx: int) -> dict:
        key = f"jobs/j/shards/{idx - idx % 2:08d}-1.tar"
        image = {"key": key, "member": f"{idx:08d}_0.png", "range": [512, 5], "seed": idx,
                 "index": 0, "url": f"http://s3.test/b/{key}?X-Amz-Signature=x"}  # fmt: skip
        return {
            "idx": idx,
            "custom_id": f"c{idx}",
            "input": {"prompt": f"p{idx}"},
            "images": [image],
        }

    with Client("http://api.test", transport=httpx.MockTransport(handler)) as client:
        failed = generate_outputs(
            client, {"id": "j"}, map(line, range(4)), tmp_path, sidecars=True, workers=2
        )
    assert failed == 0
    assert sorted(calls) == ["/b/jobs/j/shards/00000000-1.tar", "/b/jobs/j/shards/00000002-1.tar"]
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "00000000-1.tar", "00000002-1.tar"]  # fmt: skip
    with (tmp_path / "images.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows][:2] == [
        "shards/00000000-1.tar#00000000_0.png", "shards/00000000-1.tar#00000001_0.png"]  # fmt: skip
    assert (tmp_path / "images" / "00000003_0.png").read_bytes() == b"png 3"
    assert (tmp_path / "images" / "00000003_0.txt").read_text() == "p3"


def test_a_shard_that_does_not_unpack_is_reported_and_fetched_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shard that is not a tar: counted as failed (named on stderr), and deleted so that
    the next run downloads it again instead of taking it for done."""
    from janus_batch.client.cli.results import generate_outputs

    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, content=b"not a tar archive" * 64)

    key = "jobs/j/shards/00000000-1.tar"
    image = {"key": key, "member": "00000000_0.png", "range": [512, 5], "seed": 0, "index": 0,
             "url": f"http://s3.test/b/{key}?X-Amz-Signature=x"}  # fmt: skip
    lines = [{"idx": 0, "custom_id": "c0", "input": {"prompt": "p0"}, "images": [image]}]
    for run in (1, 2):
        with Client("http://api.test", transport=httpx.MockTransport(handler)) as client:
            failed = generate_outputs(
                client, {"id": "j"}, lines, tmp_path, sidecars=True, workers=1
            )
        assert failed == 1  # the command then exits non-zero ("files could not be fetched")
        assert "00000000-1.tar: cannot use it: ReadError" in capsys.readouterr().err
        assert len(calls) == run  # fetched again on the rerun
        assert not (tmp_path / "shards" / "00000000-1.tar").exists()
