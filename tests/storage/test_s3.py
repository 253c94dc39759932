"""S3-only behaviour against a real moto server: pagination, multipart, errors, presigning."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import httpx
import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from janus_batch.storage import (
    NotFoundError,
    S3Storage,
    StorageError,
    TransientStorageError,
    open_storage,
)
from janus_batch.storage.s3 import translate_error
from tests.fixtures.s3 import S3Env, free_port, set_test_credentials, start_moto


@pytest.fixture
def s3(s3_env: S3Env) -> Iterator[S3Storage]:
    store = open_storage(
        s3_env.storage_url,
        endpoint_url=s3_env.endpoint_url,
        region=s3_env.region,
        max_pool_connections=16,
    )
    assert isinstance(store, S3Storage)
    yield store
    store.close()


def test_iter_keys_paginates_past_1000(s3: S3Storage) -> None:
    keys = [f"images/{i:08d}_0.png" for i in range(1100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_bytes(k, b"x"), keys))
    listed = list(s3.iter_keys("images/"))
    assert listed == keys
    assert sum(1 for _ in s3.iter_keys()) == 1100


def test_listing_is_scoped_to_the_base_prefix(s3: S3Storage, s3_env: S3Env) -> None:
    client = s3_env.client()
    for key in ("outside.txt", "jobsX/sibling.txt", "jobs/folder/", "jobs/in.txt"):
        client.put_object(Bucket=s3_env.bucket, Key=key, Body=b"x")
    assert list(s3.iter_keys()) == ["in.txt"]  # folder markers are not objects


def test_put_file_uses_multipart_for_big_files(s3: S3Storage, s3_env: S3Env, tmp_path: Path):
    data = b"0123456789abcdef" * (9 * 65536)  # 9 MiB > 8 MiB threshold
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    s3.put_file("inputs/big.bin", src)
    head = s3_env.client().head_object(Bucket=s3_env.bucket, Key="jobs/inputs/big.bin")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart ETag counts its parts
    assert s3.size("inputs/big.bin") == len(data)
    assert s3.get_bytes("inputs/big.bin") == data


def test_content_type_from_key_or_argument(s3: S3Storage, s3_env: S3Env) -> None:
    s3.put_bytes("a.png", b"x")
    s3.put_bytes("b.jsonl", b"x", "application/x-ndjson")
    client = s3_env.client()
    assert client.head_object(Bucket=s3_env.bucket, Key="jobs/a.png")["ContentType"] == "image/png"
    head = client.head_object(Bucket=s3_env.bucket, Key="jobs/b.jsonl")
    assert head["ContentType"] == "application/x-ndjson"


def test_presigned_url_downloads_with_plain_http(s3: S3Storage) -> None:
    s3.put_bytes("images/00000001_0.png", b"\x89PNG fake")
    url = s3.presigned_url("images/00000001_0.png", expires=120)
    assert url and "X-Amz-Signature" in url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"\x89PNG fake"


def test_bucket_url_without_prefix(s3_env: S3Env) -> None:
    with open_storage(f"s3://{s3_env.bucket}", endpoint_url=s3_env.endpoint_url) as store:
        store.put_bytes("top.txt", b"x")
        assert store.uri("top.txt") == f"s3://{s3_env.bucket}/top.txt"
        assert "top.txt" in list(store.iter_keys())


def test_missing_bucket(s3_env: S3Env) -> None:
    url = "s3://no-such-bucket-janus/jobs"
    with open_storage(url, endpoint_url=s3_env.endpoint_url) as store:
        with pytest.raises(NotFoundError, match="bucket 'no-such-bucket-janus' does not exist"):
            store.ping()
        with pytest.raises(NotFoundError, match="does not exist"):
            store.put_bytes("x", b"x")
        with pytest.raises(NotFoundError):
            list(store.iter_keys())


def test_dead_endpoint_is_transient(s3_env: S3Env) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with open_storage(s3_env.storage_url, endpoint_url=dead) as store:
        with pytest.raises(TransientStorageError, match=r"127\.0\.0\.1") as info:
            store.ping()
        assert dead in str(info.value)
        with pytest.raises(TransientStorageError, match=f"s3://{s3_env.bucket}/jobs/a.txt"):
            store.put_bytes("a.txt", b"x")


def test_server_going_away_and_coming_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A private server (not the session one): stop it, then start it on the same port."""
    set_test_credentials(monkeypatch)
    with (
        start_moto() as server,
        S3Storage("s3://flaky/jobs", endpoint_url=server.endpoint_url) as store,
    ):
        client = boto3.client("s3", endpoint_url=server.endpoint_url)
        client.create_bucket(Bucket="flaky")
        store.put_bytes("a", b"1")
        server.stop()
        started = time.monotonic()
        with pytest.raises(TransientStorageError, match="s3://flaky/jobs/a"):
            store.get_bytes("a")
        assert time.monotonic() - started < 10
        server.start()
        assert server.endpoint_url.endswith(f":{server.port}")
        with pytest.raises(NotFoundError):  # moto keeps buckets in memory only
            store.ping()
        client.create_bucket(Bucket="flaky")
        store.put_bytes("a", b"2")
        assert store.get_bytes("a") == b"2"
        client.close()


def _client_error(code: str, status: int) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": "message"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_client_error("NoSuchKey", 404), NotFoundError),
        (_client_error("404", 404), NotFoundError),
        (_client_error("NoSuchBucket", 404), NotFoundError),
        (_client_error("SlowDown", 503), TransientStorageError),
        (_client_error("InternalError", 500), TransientStorageError),
        (_client_error("TooManyRequests", 429), TransientStorageError),
        (_client_error("AccessDenied", 403), StorageError),
        (EndpointConnectionError(endpoint_url="http://x"), TransientStorageError),
        (ConnectionClosedError(endpoint_url="http://x"), TransientStorageError),
        (ReadTimeoutError(endpoint_url="http://x"), TransientStorageError),
        (NoCredentialsError(), StorageError),
    ],
)
def test_translate_error(exc: Exception, expected: type[StorageError]) -> None:
    error = translate_error(exc, "read", "s3://b/k")
    assert type(error) is expected
    assert str(error).startswith("cannot read s3://b/k: ")


def test_translate_upload_failed_error() -> None:
    inner = _client_error("SlowDown", 503)
    wrapped = S3UploadFailedError(f"Failed to upload: {inner}")
    wrapped.__context__ = inner  # as boto3 raises it: inside `except ClientError`, no `from`
    assert isinstance(translate_error(wrapped, "upload", "s3://b/k"), TransientStorageError)


def test_storage_client_rate_limits_itself_when_throttled(s3_env) -> None:
    """The storage backend's client uses botocore's adaptive retry mode (client-side rate
    limiting after SlowDown / throttling answers)."""
    from janus_batch.storage import S3Storage

    storage = S3Storage(s3_env.storage_url, endpoint_url=s3_env.endpoint_url)
    try:
        assert storage._client.meta.config.retries["mode"] == "adaptive"
    finally:
        storage.close()
