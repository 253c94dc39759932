"""Generate jobs writing WebDataset shards (`params.output`) through the real API, the
in-process worker (it drains what the API enqueued) and S3 on the moto server."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import pyarrow.parquet as pq
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from janus_batch.constants import GENERATE_QUEUE
from janus_batch.db import session_scope
from janus_batch.models import Job
from janus_batch.states import JobStatus
from tests.worker.helpers import die_holding, drain, get_items, pop_message, read_jsonl
from worker.sweeper import sweep

OUTPUT = {"format": "webdataset", "images_per_shard": 4}
PROMPTS = [{"prompt": f"prompt {i}", "seed": 100 + i, "custom_id": f"c{i}"} for i in range(5)]


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_generate_into_webdataset_shards_through_the_api(make_ctx: Any, s3_env: Any) -> None:
    ctx = make_ctx(storage_url=s3_env.storage_url)
    with TestClient(create_app()) as client:
        body = {"kind": "generate", "params": {"n": 2, "output": OUTPUT}, "items": PROMPTS}
        created = client.post("/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        prefix = f"jobs/{job_id}"
        # left by a chunk that died after its upload: no result points to it
        ctx.storage.put_bytes(f"{prefix}/shards/00000099-1.tar", b"orphan")
        drain(ctx)

        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded" and job["counts"]["succeeded"] == 5, job
        keys = sorted(ctx.storage.iter_keys(f"{prefix}/"))
        shards = [k for k in keys if "/shards/" in k]
        # 4 images per shard at n=2: chunks of 2 items, each chunk one shard, named by its
        # first item and that item's attempt; no image objects, the orphan deleted
        assert shards == [f"{prefix}/shards/{i:08d}-1.tar" for i in (0, 2, 4)]
        assert not [k for k in keys if "/images/" in k]

        results = read_jsonl(client.get(f"/v1/jobs/{job_id}/results").content)
        assert [r["custom_id"] for r in results] == [p["custom_id"] for p in PROMPTS]
        shard_bytes: dict[str, bytes] = {}
        for line in results:
            idx = line["idx"]
            assert [img["index"] for img in line["images"]] == [0, 1]
            for img in line["images"]:
                shard = f"{prefix}/shards/{idx - idx % 2:08d}-1.tar"
                assert img["key"] == shard and img["member"] == f"{idx:08d}_{img['index']}.png"
                assert img["uri"] == ctx.storage.uri(shard)
                assert "X-Amz-Signature=" in img["url"] and shard in img["url"]
                if shard not in shard_bytes:
                    got = client.get(f"/v1/jobs/{job_id}/files/{shard.removeprefix(prefix + '/')}")
                    assert got.status_code == 200, got.text
                    shard_bytes[shard] = got.content
                members = _members(shard_bytes[shard])
                offset, size = img["range"]
                image = members[img["member"]]
                assert shard_bytes[shard][offset : offset + size] == image  # a ranged GET
                assert ctx.storage.open_read(shard, offset, size).read() == image
                with Image.open(io.BytesIO(image)) as picture:
                    assert picture.format == "PNG" and picture.size == (64, 64)
                meta = json.loads(members[img["member"].replace(".png", ".json")])
                assert meta["prompt"] == line["input"]["prompt"]
                assert meta["custom_id"] == line["custom_id"] and meta["seed"] == img["seed"]
                assert meta["params"]["output"] == OUTPUT and meta["model"]
        assert all(len(_members(data)) == 8 or shard.endswith("00000004-1.tar")
                   for shard, data in shard_bytes.items())  # fmt: skip

        # the dashboard shows each image from its member (a ranged GET on S3) and links shards
        page = client.get(f"/ui/jobs/{job_id}").text
        assert f"/ui/shard-images/{job_id}/3/1?size=256" in page and "results.parquet" in page
        shown = client.get(f"/ui/shard-images/{job_id}/3/1")
        offset, size = results[3]["images"][1]["range"]
        assert (
            shown.content == shard_bytes[f"{prefix}/shards/00000002-1.tar"][offset : offset + size]
        )
        assert f"/v1/jobs/{job_id}/files/shards/00000004-1.tar" in page

        table = client.get(f"/v1/jobs/{job_id}/files/results.parquet")
        rows = pq.read_table(io.BytesIO(table.content)).to_pylist()
        assert rows[3]["images"] == [
            {"key": img["key"], "member": img["member"], "seed": img["seed"]}
            for img in results[3]["images"]
        ]


def test_a_worker_lost_mid_shard_loses_nothing(make_ctx: Any, s3_env: Any) -> None:
    ctx = make_ctx(storage_url=s3_env.storage_url)
    with TestClient(create_app()) as client:
        body = {"kind": "generate", "params": {"output": OUTPUT}, "items": PROMPTS[:3]}
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        prefix = f"jobs/{job_id}"
        message = pop_message(ctx, GENERATE_QUEUE)
        assert message is not None and len(message[1][1]) == 3  # one shard: 3 items of n=1
        # a worker claimed the chunk, uploaded its shard and was killed before recording
        die_holding(ctx, job_id, message[1][1])
        ctx.storage.put_bytes(f"{prefix}/shards/00000000-1.tar", b"never recorded")
        sweep(ctx)  # the lease ran out: the items go again
        drain(ctx)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == JobStatus.SUCCEEDED
    items = get_items(ctx, job_id)
    keys = {img["key"] for item in items for img in item.result["images"]}
    assert keys == {f"{prefix}/shards/00000000-2.tar"}  # the second claim's own shard
    assert sorted(ctx.storage.iter_keys(f"{prefix}/shards/")) == sorted(keys)


def test_orphan_shards_that_cannot_be_deleted_leave_the_job_succeeded(
    make_ctx: Any, monkeypatch: Any
) -> None:
    """Deleting orphans is cleanup: a bucket that forbids DeleteObject costs the orphan's
    storage, never the finished job (it ended failed, with nothing for a retry to redo)."""
    ctx = make_ctx()
    with TestClient(create_app()) as client:
        body = {"kind": "generate", "params": {"output": OUTPUT}, "items": PROMPTS[:2]}
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        orphan = f"jobs/{job_id}/shards/00000099-1.tar"
        ctx.storage.put_bytes(orphan, b"orphan")

        def forbidden(self: Any, key: str) -> None:
            raise PermissionError(f"AccessDenied: DeleteObject {key}")

        monkeypatch.setattr(type(ctx.storage), "delete", forbidden)
        drain(ctx)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert (job["status"], job["counts"]["succeeded"]) == ("succeeded", 2), job
    assert ctx.storage.exists(orphan)  # left in place, and said in the log


def test_the_output_option_is_checked_naming_the_field(make_ctx: Any) -> None:
    make_ctx()
    cases = [
        ({"output": {"format": "zip"}}, "params.output.format"),
        ({"output": {"format": "webdataset", "images_per_shard": 0}},
         "params.output.images_per_shard"),
        ({"output": {"format": "webdataset", "images_per_shard": 10_001}},
         "params.output.images_per_shard"),
        ({"n": 4, "output": {"format": "webdataset", "images_per_shard": 2}},
         "params.output.images_per_shard"),
        ({"output": {"format": "webdataset", "shards": 3}}, "params.output.shards"),
        ({"output": "webdataset"}, "params.output"),
    ]  # fmt: skip
    with TestClient(create_app()) as client:
        for params, field in cases:
            body = {"kind": "generate", "params": params, "items": ["a fox"]}
            answer = client.post("/v1/jobs", json=body)
            assert answer.status_code == 422, (params, answer.text)
            assert answer.json()["error"]["field"] == field, answer.text
        caption = {"kind": "caption", "params": {"output": OUTPUT}, "items": ["s3://b/a.png"]}
        answer = client.post("/v1/jobs", json=caption)
        assert answer.status_code == 422
        assert answer.json()["error"] == {
            "message": "params.output: only a generate job writes images "
            "(WebDataset shards or objects)",
            "field": "params.output",
        }


def test_a_stale_finalize_keeps_a_shard_uploaded_after_it_read_the_items(
    make_ctx: Any, monkeypatch: Any
) -> None:
    """A second (stale) finalize reads the items; meanwhile the job ended, a retried item's
    chunk uploaded its new shard and recorded it. Only shards listed before the items were
    read can be orphans: the new shard stays, an older orphan goes."""
    import worker.finalize as finalize

    ctx = make_ctx()
    with TestClient(create_app()) as client:
        body = {"kind": "generate", "params": {"output": OUTPUT}, "items": PROMPTS[:2]}
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        drain(ctx)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == JobStatus.SUCCEEDED
    prefix = f"jobs/{job_id}/shards"
    ctx.storage.put_bytes(f"{prefix}/00000099-1.tar", b"orphan")
    retried = f"{prefix}/00000000-2.tar"
    read_items = finalize.iter_items

    def items_then_a_retried_upload(*args: Any, **kwargs: Any) -> Any:
        yield from read_items(*args, **kwargs)
        ctx.storage.put_bytes(retried, b"a retried item's shard")

    monkeypatch.setattr(finalize, "iter_items", items_then_a_retried_upload)
    with session_scope(ctx.database_url) as session:
        job = session.get(Job, job_id)
    finalize.write_manifests(ctx, job)

    assert sorted(ctx.storage.iter_keys(f"{prefix}/")) == [f"{prefix}/00000000-1.tar", retried]


def test_a_failed_shard_write_uploads_nothing_and_the_items_go_again(
    make_ctx: Any, monkeypatch: Any
) -> None:
    """The spool disk fills up in the middle of a member (OSError ENOSPC): the writer is
    broken, takes nothing more, the corrupt shard is never uploaded and the chunk's items
    are deferred, not failed; they run again into a new, valid shard."""
    import errno

    ctx = make_ctx()
    addfile = tarfile.TarFile.addfile
    calls: list[str] = []

    def disk_full_once(self: tarfile.TarFile, info: tarfile.TarInfo, fileobj: Any = None) -> None:
        calls.append(info.name)
        if len(calls) == 3:  # the second image's member: a header, part of the data, then full
            self.fileobj.write(b"\0" * 700)  # type: ignore[union-attr]
            raise OSError(errno.ENOSPC, "No space left on device")
        addfile(self, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", disk_full_once)
    with TestClient(create_app()) as client:
        body = {"kind": "generate", "params": {"output": OUTPUT}, "items": PROMPTS[:3]}
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        drain(ctx)
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == JobStatus.SUCCEEDED and job["counts"]["failed"] == 0, job
    prefix = f"jobs/{job_id}/shards"
    assert sorted(ctx.storage.iter_keys(f"{prefix}/")) == [f"{prefix}/00000000-2.tar"]
    items = get_items(ctx, job_id)
    assert {img["key"] for item in items for img in item.result["images"]} == {
        f"{prefix}/00000000-2.tar"
    }
    assert [item.retries for item in items] == [1, 1, 1]  # deferred once, no attempt spent
    with ctx.storage.open_read(f"{prefix}/00000000-2.tar") as shard:
        assert len(_members(shard.read())) == 6
