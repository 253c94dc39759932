"""Fetching inputs by URI: s3://, storage:<key>, http(s) against a local server, files.

The local HTTP server is on loopback, which the egress policy refuses by default: these tests
allow-list its port (tests/security/test_egress.py shows the refusals)."""

from __future__ import annotations

import pickle
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from janus_batch.egress import EgressPolicy, parse_allow
from janus_batch.storage import LocalStorage, Storage, TransientStorageError
from tests.fixtures.s3 import S3Env, free_port, set_test_credentials
from worker.fetch import FetchError, fetch_many, fetch_uri, parse_s3_uri, retry_transient


class _Handler(BaseHTTPRequestHandler):
    """/ok, /status/<code>, /flaky/<name> (503 twice, then 200), /big, /stream-big, /slow."""

    hits: ClassVar[Counter[str]] = Counter()
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_GET(self) -> None:
        path = self.path
        with self.lock:
            self.hits[path] += 1
            hits = self.hits[path]
        if path == "/ok":
            self._send(200, b"image bytes")
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"error page")
        elif path.startswith("/flaky/"):
            self._send(503, b"busy") if hits <= 2 else self._send(200, b"finally")
        elif path == "/big":
            self._send(200, b"x" * 2048)
        elif path == "/stream-big":  # no Content-Length: the size shows only while reading
            self.send_response(200)
            self.end_headers()
            for _ in range(4):
                self.wfile.write(b"y" * 512)
        elif path == "/slow":
            time.sleep(1.0)
            self._send(200, b"late")
        else:
            self._send(404, b"not found")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    """Base URL of a small threaded HTTP server on a loopback port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def egress(http_base: str) -> EgressPolicy:
    """A policy allowing plain http to the test server's loopback port (and no other)."""
    return EgressPolicy(allow_http=True, allow=parse_allow(http_base.removeprefix("http://")))


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


# --- URIs of every kind -------------------------------------------------------------------


def test_s3_uri(s3_env: S3Env) -> None:
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="photos/cat.jpg", Body=b"meow")

    def fetch(uri: str) -> bytes:
        return fetch_uri(uri, endpoint_url=s3_env.endpoint_url, region=s3_env.region)

    assert fetch(f"s3://{s3_env.bucket}/photos/cat.jpg") == b"meow"
    with pytest.raises(FetchError, match=r"dog\.jpg") as info:
        fetch(f"s3://{s3_env.bucket}/photos/dog.jpg")
    assert info.value.permanent
    with pytest.raises(FetchError, match="does not exist") as info:
        fetch("s3://no-such-bucket-janus/cat.jpg")
    assert info.value.permanent


def test_s3_dead_endpoint_is_transient_after_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    set_test_credentials(monkeypatch)
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(FetchError, match="gave up after 3 attempts") as info:
        fetch_uri("s3://bucket/key.png", endpoint_url=dead, max_retries=2, base_delay=0.01)
    assert not info.value.permanent
    assert "s3://bucket/key.png" in str(info.value)


def test_storage_key(storage: Storage) -> None:
    storage.put_bytes("inputs/upload-1.png", b"uploaded")
    assert fetch_uri("storage:inputs/upload-1.png", storage=storage) == b"uploaded"
    with pytest.raises(FetchError, match=r"storage:inputs/missing\.png") as info:
        fetch_uri("storage:inputs/missing.png", storage=storage, base_delay=0.01)
    assert info.value.permanent
    with pytest.raises(FetchError, match=r"storage:\.\./etc/passwd") as info:
        fetch_uri("storage:../etc/passwd", storage=storage)
    assert info.value.permanent


def test_storage_key_without_storage() -> None:
    with pytest.raises(FetchError, match="no storage configured") as info:
        fetch_uri("storage:inputs/a.png")
    assert info.value.permanent


def test_http(http_base: str, egress: EgressPolicy) -> None:
    assert fetch_uri(f"{http_base}/ok", egress=egress) == b"image bytes"


@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_http_client_errors_are_permanent(
    http_base: str, egress: EgressPolicy, status: int
) -> None:
    url = f"{http_base}/status/{status}"
    with pytest.raises(FetchError, match=f"HTTP {status}") as info:
        fetch_uri(url, base_delay=0.01, egress=egress)
    assert info.value.permanent
    assert url in str(info.value)
    assert _Handler.hits[f"/status/{status}"] == 1  # not retried


def test_http_503_twice_then_ok(http_base: str, egress: EgressPolicy) -> None:
    data = fetch_uri(f"{http_base}/flaky/a", max_retries=3, base_delay=0.01, egress=egress)
    assert data == b"finally"
    assert _Handler.hits["/flaky/a"] == 3


def test_http_retries_run_out(http_base: str, egress: EgressPolicy) -> None:
    with pytest.raises(FetchError, match=r"HTTP 503.*gave up after 2 attempts") as info:
        fetch_uri(f"{http_base}/flaky/b", max_retries=1, base_delay=0.01, egress=egress)
    assert not info.value.permanent
    with pytest.raises(FetchError, match="HTTP 429") as info:
        fetch_uri(f"{http_base}/status/429", max_retries=0, egress=egress)
    assert not info.value.permanent


def test_http_timeout_and_refused_are_transient(http_base: str, egress: EgressPolicy) -> None:
    with pytest.raises(FetchError, match="ReadTimeout") as info:
        fetch_uri(f"{http_base}/slow", timeout=0.2, max_retries=0, egress=egress)
    assert not info.value.permanent
    closed = f"127.0.0.1:{free_port()}"  # an allowed host that is down: worth retrying
    allowed = EgressPolicy(allow_http=True, allow=parse_allow(closed))
    with pytest.raises(FetchError, match="ConnectError") as info:
        fetch_uri(f"http://{closed}/x", max_retries=1, base_delay=0.01, egress=allowed)
    assert not info.value.permanent


def test_file_path_and_file_url(tmp_path: Path) -> None:
    path = tmp_path / "in put.png"
    path.write_bytes(b"local")
    assert fetch_uri(str(path)) == b"local"
    assert fetch_uri(path.as_uri()) == b"local"
    with pytest.raises(FetchError, match="no such file") as info:
        fetch_uri(str(tmp_path / "missing.png"))
    assert info.value.permanent


@pytest.mark.parametrize("uri", ["relative/path.png", "ftp://host/x", "data:,abc", ""])
def test_unsupported_uris_are_permanent(uri: str) -> None:
    with pytest.raises(FetchError, match="unsupported input URI") as info:
        fetch_uri(uri)
    assert info.value.permanent


# --- size limit ---------------------------------------------------------------------------


def test_oversized_inputs_are_rejected(
    http_base: str, egress: EgressPolicy, tmp_path: Path, local: LocalStorage, s3_env: S3Env
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"z" * 2048)
    local.put_bytes("inputs/big.bin", b"z" * 2048)
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="big.bin", Body=b"z" * 2048)
    uris = [
        f"{http_base}/big",  # Content-Length says so
        f"{http_base}/stream-big",  # only the body says so
        str(big),
        "storage:inputs/big.bin",
        f"s3://{s3_env.bucket}/big.bin",
    ]
    for uri in uris:
        with pytest.raises(FetchError, match="larger than the 1,024-byte limit") as info:
            fetch_uri(
                uri,
                storage=local,
                endpoint_url=s3_env.endpoint_url,
                max_bytes=1024,
                egress=egress,
            )
        assert info.value.permanent
        assert uri in str(info.value)
    assert fetch_uri(str(big), max_bytes=2048) == b"z" * 2048  # the limit itself is fine


# --- many at once -------------------------------------------------------------------------


def test_fetch_many_keeps_order_and_isolates_errors(
    http_base: str, egress: EgressPolicy, tmp_path: Path, local: LocalStorage
) -> None:
    (tmp_path / "a.png").write_bytes(b"file a")
    local.put_bytes("inputs/b.png", b"stored b")
    uris = [
        f"{http_base}/ok",
        f"{http_base}/status/404",
        str(tmp_path / "a.png"),
        "storage:inputs/b.png",
        "nonsense",
        f"{http_base}/flaky/many",
    ] * 3
    results = fetch_many(uris, concurrency=4, storage=local, base_delay=0.01, egress=egress)
    assert len(results) == len(uris)
    for i in range(0, len(uris), 6):
        ok, missing, file_a, stored_b, nonsense, flaky = results[i : i + 6]
        assert ok == b"image bytes"
        assert isinstance(missing, FetchError) and missing.permanent
        assert file_a == b"file a"
        assert stored_b == b"stored b"
        assert isinstance(nonsense, FetchError) and "nonsense" in str(nonsense)
        assert flaky == b"finally"  # two 503s in all, fewer than each call's 4 attempts
    assert fetch_many([], concurrency=8) == []


# --- helpers ------------------------------------------------------------------------------


def test_retry_transient() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientStorageError("busy")
        return "done"

    assert retry_transient(flaky, attempts=4, base_delay=0.001) == "done"
    assert len(calls) == 3

    calls.clear()
    with pytest.raises(TransientStorageError):
        retry_transient(flaky, attempts=2, base_delay=0.001)
    assert len(calls) == 2

    def permanent() -> None:
        calls.append(1)
        raise FetchError("gone", permanent=True)

    calls.clear()
    with pytest.raises(FetchError):
        retry_transient(permanent, attempts=5, base_delay=0.001)
    assert len(calls) == 1


def test_fetch_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(FetchError("cannot fetch x", permanent=False)))
    assert (str(error), error.permanent) == ("cannot fetch x", False)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/key.png", ("bucket", "key.png")),
        ("s3://my.bucket-1/a/b/c d?#.png", ("my.bucket-1", "a/b/c d?#.png")),
    ],
)
def test_parse_s3_uri(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize(
    "uri", ["s3://bucket", "s3://bucket/", "s3:///key", "http://b/k", "s3:/b/k"]
)
def test_parse_s3_uri_rejects(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_uri(uri)


def test_parse_s3_uri_prefix() -> None:
    assert parse_s3_uri("s3://bucket", require_key=False) == ("bucket", "")
    assert parse_s3_uri("s3://bucket/pre/", require_key=False) == ("bucket", "pre/")
