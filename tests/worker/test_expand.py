"""Expanding sources: an S3 prefix (moto) and JSONL manifests, with bad lines and resumes."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image

from janus_batch import constants, files
from janus_batch.files import save_upload
from janus_batch.inputs import caption_item, parse_params
from janus_batch.items import add_items
from janus_batch.states import ItemStatus, JobKind, JobStatus
from tests.worker.helpers import (
    create_job,
    drain,
    get_items,
    get_job,
    peek_messages,
    png_bytes,
    read_jsonl,
)
from worker import expand, sources
from worker.expand import expand_source


def image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (90, 120, 200)).save(buffer, fmt)
    return buffer.getvalue()


def fill_prefix(s3_env: Any) -> list[str]:
    """Images (several extensions and cases) and non-images; returns the expected URIs."""
    client = s3_env.client()
    objects = {
        "photos/a.JPG": image_bytes("JPEG"),
        "photos/b.png": image_bytes("PNG"),
        "photos/c.gif": image_bytes("GIF"),
        "photos/notes.txt": b"not an image",
        "photos/sub/": b"",
        "photos/sub/d.webp": image_bytes("WEBP"),
        "photos/sub/e.TIFF": image_bytes("TIFF"),
        "photos/sub/f.bmp": image_bytes("BMP"),
        "elsewhere/x.png": image_bytes("PNG"),
    }
    for key, data in objects.items():
        client.put_object(Bucket=s3_env.bucket, Key=key, Body=data)
    keys = ["photos/a.JPG", "photos/b.png", "photos/c.gif", "photos/sub/d.webp",
            "photos/sub/e.TIFF", "photos/sub/f.bmp"]  # fmt: skip
    return [f"s3://{s3_env.bucket}/{key}" for key in keys]


def test_expand_s3_prefix(make_ctx: Any, s3_env: Any) -> None:
    ctx = make_ctx(chunk_size="4")
    expected = fill_prefix(s3_env)
    prefix = f"s3://{s3_env.bucket}/photos/"
    job_id = create_job(ctx, JobKind.CAPTION, source={"s3_prefix": prefix})

    assert expand_source(ctx, job_id) == 6
    assert expand_source(ctx, job_id) == 0  # redelivered: already expanded

    job = get_job(ctx, job_id)
    assert (job.expanded, job.total, job.error) == (True, 6, None)
    rows = get_items(ctx, job_id)
    assert [r.input["image"] for r in rows] == expected
    assert [r.idx for r in rows] == list(range(6))
    chunks = peek_messages(ctx, "janus.caption")
    assert [len(args[1]) for _, args in chunks] == [4, 2]

    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 6, 0), [
        r.error for r in get_items(ctx, job_id)
    ]


def test_expand_enqueues_while_the_listing_goes_on(
    make_ctx: Any, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(chunk_size="2", dispatch_window="2")
    expected = fill_prefix(s3_env)
    monkeypatch.setattr(sources, "LIST_PAGE", 2)
    monkeypatch.setattr(expand, "INSERT_PAGE", 2)
    seen: list[tuple[str, int]] = []  # (key listed, chunk messages already queued)
    original = sources.list_images

    def watched(*args: Any, **kwargs: Any) -> Any:
        for uri in original(*args, **kwargs):
            seen.append((uri, len(peek_messages(ctx, "janus.caption"))))
            yield uri

    monkeypatch.setattr(sources, "list_images", watched)
    job_id = create_job(ctx, JobKind.CAPTION, source={"s3_prefix": f"s3://{s3_env.bucket}/photos/"})
    assert expand_source(ctx, job_id) == 6
    assert [uri for uri, _ in seen] == expected
    assert [queued for _, queued in seen] == [0, 0, 1, 1, 2, 2]
    # the job's window (JANUS_BATCH_DISPATCH_WINDOW=2) is full: the third chunk waits in SQL
    assert len(peek_messages(ctx, "janus.caption")) == ctx.settings.dispatch_window == 2


def test_expand_resumes_after_the_last_inserted_key(ctx: Any, s3_env: Any) -> None:
    expected = fill_prefix(s3_env)
    job_id = create_job(ctx, JobKind.CAPTION, source={"s3_prefix": f"s3://{s3_env.bucket}/photos/"})
    params = parse_params(JobKind.CAPTION, get_job(ctx, job_id).params, max_n=16)
    first = [caption_item(uri, params, where="x", max_prompt_chars=99) for uri in expected[:2]]
    add_items(ctx.database_url, ctx.app, job_id, JobKind.CAPTION, first, chunk_size=8, window=9)
    # ... and the expansion crashed here

    assert expand_source(ctx, job_id) == 4
    rows = get_items(ctx, job_id)
    assert [r.input["image"] for r in rows] == expected
    assert get_job(ctx, job_id).total == 6


def test_missing_bucket_and_empty_prefix_fail_the_job(ctx: Any, s3_env: Any) -> None:
    missing = create_job(ctx, JobKind.CAPTION, source={"s3_prefix": "s3://no-such-bucket-7/p/"})
    empty = create_job(
        ctx, JobKind.CAPTION, source={"s3_prefix": f"s3://{s3_env.bucket}/nothing-here/"}
    )
    assert expand_source(ctx, missing) == 0
    assert expand_source(ctx, empty) == 0
    assert peek_messages(ctx, "janus.control") == [
        (constants.FINALIZE_JOB_TASK, [missing]), (constants.FINALIZE_JOB_TASK, [empty]),
    ]  # fmt: skip
    drain(ctx)
    job = get_job(ctx, missing)
    assert job.status == JobStatus.FAILED
    assert "no-such-bucket-7" in job.error and "does not exist" in job.error
    job = get_job(ctx, empty)
    assert job.status == JobStatus.FAILED
    assert job.error == f"no images found under s3://{s3_env.bucket}/nothing-here/"
    assert read_jsonl(ctx.storage.get_bytes(f"jobs/{empty}/results.jsonl")) == []


def caption_manifest(s3_env: Any) -> bytes:
    client = s3_env.client()
    client.put_object(Bucket=s3_env.bucket, Key="m/cat.png", Body=png_bytes())
    uri = f"s3://{s3_env.bucket}/m/cat.png"
    lines = [
        json.dumps({"image": uri, "custom_id": "first"}),
        "",
        json.dumps(uri),
        '{"image": "s3://b/k.png",, }',
        json.dumps({"image": "ftp://host/x.png"}),
        json.dumps({"image": "file_abc123"}),
        json.dumps({"image": uri, "prompt": "What color is it?"}),
    ]
    return ("\r\n".join(lines)).encode()  # CRLF, no final newline


def test_manifest_with_bad_lines(ctx: Any, s3_env: Any) -> None:
    ctx.storage.put_bytes("inputs/file_m1/manifest.jsonl", caption_manifest(s3_env))
    job_id = create_job(
        ctx, JobKind.CAPTION, source={"manifest": "storage:inputs/file_m1/manifest.jsonl"}
    )
    assert expand_source(ctx, job_id) == 6
    job = get_job(ctx, job_id)
    assert (job.total, job.failed, job.expanded) == (6, 3, True)
    rows = get_items(ctx, job_id)
    assert [r.status for r in rows] == ["pending", "pending", "failed", "failed", "failed",
                                       "pending"]  # fmt: skip
    assert rows[2].input == {"line": 4, "raw": '{"image": "s3://b/k.png",, }'}
    assert rows[2].error.startswith("manifest line 4: invalid JSON (")
    assert rows[3].error.startswith("manifest line 5.image: unsupported image reference")
    assert rows[4].error == "manifest line 6.image: unknown file id 'file_abc123'"
    assert rows[5].input["prompt"] == "What color is it?"
    assert rows[0].custom_id == "first"
    [(_, chunk)] = peek_messages(ctx, "janus.caption")
    assert chunk[1] == [rows[0].id, rows[1].id, rows[5].id]  # failed lines are not enqueued

    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 3, 3)
    errors = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/errors.jsonl"))
    assert [e["input"].get("line") for e in errors] == [4, 5, 6]


def test_refused_lines_keep_their_custom_id_and_not_sent_lines_fail(ctx: Any) -> None:
    """A refused line keeps the custom_id it gives (errors.jsonl and --resume name it);
    `{custom_id, error}` is an input the client could not send: failed, never run."""
    lines = [
        json.dumps({"prompt": "a fox", "custom_id": "1"}),
        json.dumps({"prompt": "x" * 5000, "custom_id": "2"}),
        json.dumps({"custom_id": "3", "error": "cannot read (Permission denied)"}),
        json.dumps({"prompt": "a boat", "n": 0, "custom_id": 4}),  # not a string: none kept
    ]
    ctx.storage.put_bytes("inputs/file_m8/manifest.jsonl", "\n".join(lines).encode())
    job_id = create_job(
        ctx, JobKind.GENERATE, source={"manifest": "storage:inputs/file_m8/manifest.jsonl"}
    )
    assert expand_source(ctx, job_id) == 4
    rows = get_items(ctx, job_id)
    assert [(r.custom_id, r.status) for r in rows] == [
        ("1", "pending"),
        ("2", "failed"),
        ("3", "failed"),
        (None, "failed"),
    ]
    assert rows[1].error.startswith("manifest line 2.prompt: is 5000 characters")
    assert rows[2].error == "not sent by the client: cannot read (Permission denied)"
    assert rows[2].input == {}


def test_hostile_manifest_lines_fail_alone_and_the_job_finishes(ctx: Any, s3_env: Any) -> None:
    """Deep nesting and giant integers make json.loads raise RecursionError / ValueError;
    they must become failed items, not an expand task that crashes on every delivery."""
    uri = f"s3://{s3_env.bucket}/m/cat.png"
    lines = [
        json.dumps({"image": uri}).encode(),
        b"[" * 100_000 + b"]" * 100_000,
        b'{"image": "' + uri.encode() + b'", "seed": ' + b"9" * 5000 + b"}",
    ]
    ctx.storage.put_bytes("inputs/file_m9/manifest.jsonl", b"\n".join(lines) + b"\n")
    job_id = create_job(
        ctx, JobKind.CAPTION, source={"manifest": "storage:inputs/file_m9/manifest.jsonl"}
    )
    assert expand_source(ctx, job_id) == 3
    rows = get_items(ctx, job_id)
    assert [r.status for r in rows] == ["pending", "failed", "failed"]
    assert rows[1].error == "manifest line 2: invalid JSON (nested too deeply)"
    assert rows[2].error.startswith("manifest line 3: invalid JSON (")
    assert get_job(ctx, job_id).expanded


def test_manifest_resume_skips_lines_already_added(ctx: Any, s3_env: Any) -> None:
    ctx.storage.put_bytes("inputs/file_m2/manifest.jsonl", caption_manifest(s3_env))
    job_id = create_job(
        ctx, JobKind.CAPTION, source={"manifest": "storage:inputs/file_m2/manifest.jsonl"}
    )
    params = parse_params(JobKind.CAPTION, get_job(ctx, job_id).params, max_n=16)
    uri = f"s3://{s3_env.bucket}/m/cat.png"
    done = [caption_item(uri, params, where="x", max_prompt_chars=99)] * 3
    add_items(ctx.database_url, ctx.app, job_id, JobKind.CAPTION, done, chunk_size=8, window=9)
    # ... and the expansion crashed here

    assert expand_source(ctx, job_id) == 3
    rows = get_items(ctx, job_id)
    assert len(rows) == 6
    assert [r.status for r in rows[3:]] == ["failed", "failed", "pending"]
    assert rows[3].input["line"] == 5


def test_generate_manifest_over_s3_and_https(make_ctx: Any, s3_env: Any) -> None:
    # the presigned URL points at the test's S3 server on loopback, which the egress policy
    # refuses unless allow-listed (tests/security/test_egress.py)
    endpoint = s3_env.endpoint_url.removeprefix("http://")
    ctx = make_ctx(egress_allow_http="true", egress_allow=endpoint)
    client = s3_env.client()
    lines = [{"prompt": "a fox", "seed": 5, "n": 2}, {"prompt": "a boat", "cfg_weight": 1.0},
             {"prompt": ""}]  # fmt: skip
    body = "\n".join(json.dumps(line) for line in lines) + "\n"
    client.put_object(Bucket=s3_env.bucket, Key="manifests/gen.jsonl", Body=body.encode())
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": s3_env.bucket, "Key": "manifests/gen.jsonl"}
    )
    for uri in (f"s3://{s3_env.bucket}/manifests/gen.jsonl", url):
        job_id = create_job(ctx, JobKind.GENERATE, source={"manifest": uri})
        assert expand_source(ctx, job_id) == 3
        drain(ctx)
        job = get_job(ctx, job_id)
        assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 2, 1)
        rows = get_items(ctx, job_id)
        assert rows[0].input["seed"] == 5 and len(rows[0].result["images"]) == 2
        assert rows[1].input["cfg_weight"] == 1.0
        assert rows[2].status == ItemStatus.FAILED and "manifest line 3" in rows[2].error


def test_unreadable_manifest_fails_the_job(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.CAPTION, source={"manifest": "storage:inputs/nope.jsonl"})
    assert expand_source(ctx, job_id) == 0
    drain(ctx)
    job = get_job(ctx, job_id)
    assert job.status == JobStatus.FAILED and "nope.jsonl" in job.error


def upload(ctx: Any, owner: str, data: bytes, filename: str, purpose: str = "image") -> str:
    row, _ = save_upload(
        ctx.database_url,
        ctx.storage,
        owner=owner,
        stream=io.BytesIO(data),
        filename=filename,
        purpose=purpose,
        max_bytes=10_000_000,
    )
    return row.id


def test_manifest_of_file_ids_resolves_the_owners_files(
    ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's big-folder path: images uploaded, then a manifest of their file ids."""
    mine = [
        upload(ctx, constants.LOCAL_OWNER, png_bytes((i * 40, 90, 90)), f"{i}.png")
        for i in range(3)
    ]
    foreign = upload(ctx, "someone-else", png_bytes((1, 2, 3)), "theirs.png")
    a_manifest = upload(
        ctx, constants.LOCAL_OWNER, b'{"image": "s3://b/k.png"}\n', "m.jsonl", "manifest"
    )
    unknown = "file_" + "0" * 24
    entries = [
        {"image": mine[0], "custom_id": "a"},
        {"image": foreign},
        mine[1],  # a bare string is an image reference too
        {"image": unknown},
        {"image": a_manifest},
        {"image": mine[2], "prompt": "What color?"},
    ]
    body = "".join(json.dumps(e) + "\n" for e in entries).encode()
    ctx.storage.put_bytes("inputs/local/ids/manifest.jsonl", body)
    lookups: list[list[str]] = []
    original = files.load_files

    def counted(database_url: str, owner: str, file_ids: Any) -> Any:
        lookups.append(sorted(file_ids))
        return original(database_url, owner, file_ids)

    monkeypatch.setattr(files, "load_files", counted)
    monkeypatch.setattr(expand, "RESOLVE_PAGE", 4)
    job_id = create_job(
        ctx, JobKind.CAPTION, source={"manifest": "storage:inputs/local/ids/manifest.jsonl"}
    )

    assert expand_source(ctx, job_id) == 6
    assert lookups == [sorted([mine[0], foreign, mine[1], unknown]), sorted([a_manifest, mine[2]])]
    rows = get_items(ctx, job_id)
    assert [r.status for r in rows] == ["pending", "failed", "pending", "failed", "failed",
                                       "pending"]  # fmt: skip
    key = files.get_file(ctx.database_url, constants.LOCAL_OWNER, mine[0]).storage_key
    assert rows[0].input == {
        "image": mine[0],
        "uri": f"storage:{key}",
        "prompt": "Describe this image.",
        "seed": rows[0].input["seed"],  # drawn, recorded
    }
    assert isinstance(rows[0].input["seed"], int)
    assert rows[0].custom_id == "a"
    assert rows[2].input["image"] == mine[1] and rows[2].input["uri"].startswith("storage:inputs/")
    assert rows[1].error == f"manifest line 2.image: unknown file id '{foreign}'"
    assert rows[1].input == {"line": 2, "raw": json.dumps({"image": foreign})}
    assert rows[3].error == f"manifest line 4.image: unknown file id '{unknown}'"
    assert rows[4].error == (
        f"manifest line 5.image: file '{a_manifest}' was uploaded as manifest, not image"
    )

    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 3, 3)
    results = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl"))
    assert [r["input"]["image"] for r in results] == [mine[0], mine[1], mine[2]]


def s3_ctx(make_ctx: Any, s3_env: Any) -> Any:
    return make_ctx(
        storage_url=s3_env.storage_url,
        s3_endpoint_url=s3_env.endpoint_url,
        s3_region=s3_env.region,
    )


def test_manifest_line_into_the_service_storage_fails_alone(make_ctx: Any, s3_env: Any) -> None:
    """Storage is s3://bucket/jobs: a line naming an object under it (another user's upload)
    fails alone; an image elsewhere in the same bucket and an uploaded file id still work."""
    ctx = s3_ctx(make_ctx, s3_env)
    secret = upload(ctx, "someone-else", png_bytes(), "secret.png")
    [secret_key] = [k for k in ctx.storage.iter_keys("inputs/someone-else/")]
    mine = upload(ctx, constants.LOCAL_OWNER, png_bytes(), "mine.png")
    client = s3_env.client()
    client.put_object(Bucket=s3_env.bucket, Key="m/cat.png", Body=png_bytes())
    inside = f"s3://{s3_env.bucket}/jobs/{secret_key}"
    lines = [
        {"image": f"s3://{s3_env.bucket}/m/cat.png"},
        {"image": inside},
        {"image": mine},
        {"image": f"S3://{s3_env.bucket}//jobs/./{secret_key}"},
    ]
    ctx.storage.put_bytes(
        "inputs/file_m7/manifest.jsonl", "\n".join(json.dumps(x) for x in lines).encode()
    )
    job_id = create_job(
        ctx, JobKind.CAPTION, source={"manifest": "storage:inputs/file_m7/manifest.jsonl"}
    )
    assert expand_source(ctx, job_id) == 4
    rows = get_items(ctx, job_id)
    assert [r.status for r in rows] == ["pending", "failed", "pending", "failed"]
    assert rows[1].error == (
        f"manifest line 2.image: '{inside}' points into this service's own storage; "
        "upload the file (POST /v1/files) and use its file id"
    )
    assert "own storage" in rows[3].error
    assert rows[1].input == {"line": 2, "raw": json.dumps(lines[1])}
    assert rows[2].input["uri"].startswith("storage:inputs/")
    assert secret != mine

    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 2, 2)


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({"manifest": "s3://{bucket}/jobs/jobs/job_other/errors.jsonl"}, "source.manifest"),
        ({"s3_prefix": "s3://{bucket}/jobs/inputs/"}, "source.s3_prefix"),
        ({"s3_prefix": "s3://{bucket}/"}, "source.s3_prefix"),
    ],
)
def test_a_source_in_the_service_storage_fails_the_job(
    make_ctx: Any, s3_env: Any, source: dict[str, str], field: str
) -> None:
    """A job stored before the API refused such sources is failed by expand, unread."""
    ctx = s3_ctx(make_ctx, s3_env)
    ctx.storage.put_bytes("jobs/job_other/errors.jsonl", b'{"image": "s3://b/k.png"}\n')
    ctx.storage.put_bytes("inputs/x/abc/cat.png", png_bytes())
    source = {k: v.format(bucket=s3_env.bucket) for k, v in source.items()}
    job_id = create_job(ctx, JobKind.CAPTION, source=source)
    assert expand_source(ctx, job_id) == 0
    drain(ctx)
    job = get_job(ctx, job_id)
    assert job.status == JobStatus.FAILED and job.total == 0
    assert job.error.startswith(f"{field} 's3://{s3_env.bucket}/")
    assert "points into this service's own storage" in job.error
