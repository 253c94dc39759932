"""The behaviour every Storage backend shares, run against a local folder and moto S3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from janus_batch.storage import NotFoundError, Storage

BAD_KEYS = ["", "/abs/key", "../up", "a/../b", "a//b", "./a", "a/.", "a\\b", "nul\x00"]


def test_put_get_exists_size(storage: Storage) -> None:
    assert not storage.exists("42/results.jsonl")
    storage.put_bytes("42/results.jsonl", b'{"a": 1}\n', "application/x-ndjson")
    assert storage.exists("42/results.jsonl")
    assert storage.get_bytes("42/results.jsonl") == b'{"a": 1}\n'
    assert storage.size("42/results.jsonl") == 9


def test_put_replaces_existing(storage: Storage) -> None:
    storage.put_bytes("k.bin", b"old contents")
    storage.put_bytes("k.bin", b"new")
    assert storage.get_bytes("k.bin") == b"new"
    assert list(storage.iter_keys()) == ["k.bin"]


def test_empty_object(storage: Storage) -> None:
    storage.put_bytes("empty", b"")
    assert storage.exists("empty")
    assert storage.size("empty") == 0
    assert storage.get_bytes("empty") == b""


def test_missing_key(storage: Storage) -> None:
    assert not storage.exists("nope/missing.png")
    assert storage.size("nope/missing.png") is None
    with pytest.raises(NotFoundError, match=r"missing\.png"):
        storage.get_bytes("nope/missing.png")
    with pytest.raises(NotFoundError) as info:
        storage.open_read("nope/missing.png")
    assert storage.uri("nope/missing.png") in str(info.value)


def test_a_folder_is_not_an_object(storage: Storage) -> None:
    storage.put_bytes("dir/file", b"x")
    assert not storage.exists("dir")
    assert storage.size("dir") is None
    with pytest.raises(NotFoundError):
        storage.get_bytes("dir")
    storage.delete("dir")
    assert storage.exists("dir/file")


def test_delete(storage: Storage) -> None:
    storage.put_bytes("a/b.txt", b"x")
    storage.delete("a/b.txt")
    assert not storage.exists("a/b.txt")
    storage.delete("a/b.txt")  # missing: no error
    assert list(storage.iter_keys()) == []


def test_put_file_and_streaming_read(storage: Storage, tmp_path: Path) -> None:
    data = bytes(range(256)) * (3 * 4096)  # 3 MiB
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    storage.put_file("inputs/src.bin", src)
    assert storage.size("inputs/src.bin") == len(data)
    chunks = []
    with storage.open_read("inputs/src.bin") as stream:
        while chunk := stream.read(64 * 1024):
            assert len(chunk) <= 64 * 1024
            chunks.append(chunk)
    assert len(chunks) > 1
    assert b"".join(chunks) == data


def test_iter_keys_sorted_relative_and_streamed(storage: Storage) -> None:
    keys = ["b.txt", "a/x", "a-c", "a/y/z", "images/00000002_0.png", "images/00000001_0.png"]
    for key in keys:
        storage.put_bytes(key, key.encode())
    listing = storage.iter_keys()
    assert isinstance(listing, Iterator)  # a generator, not a list built up front
    assert list(listing) == sorted(keys)  # byte order: "a-c" < "a/x" as on S3
    assert list(storage.iter_keys("images/")) == [
        "images/00000001_0.png",
        "images/00000002_0.png",
    ]
    assert list(storage.iter_keys("a")) == ["a-c", "a/x", "a/y/z"]
    assert list(storage.iter_keys("a/")) == ["a/x", "a/y/z"]
    assert list(storage.iter_keys("images/00000002")) == ["images/00000002_0.png"]
    assert list(storage.iter_keys("nothing/")) == []


def test_uri_format(storage: Storage) -> None:
    uri = storage.uri("images/00000001_0.png")
    if storage.url.startswith("s3://"):
        assert uri == f"{storage.url}/images/00000001_0.png"
    else:
        assert uri == f"file://{storage.url}/images/00000001_0.png"


@pytest.mark.parametrize("key", BAD_KEYS)
def test_key_validation(storage: Storage, key: str) -> None:
    for call in (
        lambda: storage.put_bytes(key, b"x"),
        lambda: storage.get_bytes(key),
        lambda: storage.open_read(key),
        lambda: storage.exists(key),
        lambda: storage.size(key),
        lambda: storage.delete(key),
        lambda: storage.uri(key),
        lambda: storage.presigned_url(key),
        lambda: storage.local_path(key),
    ):
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("prefix", ["/", "../", "a/../"])
def test_bad_listing_prefix(storage: Storage, prefix: str) -> None:
    with pytest.raises(ValueError):
        list(storage.iter_keys(prefix))


def test_ping_ok(storage: Storage) -> None:
    storage.ping()


def test_backend_specific_paths(storage: Storage) -> None:
    if storage.url.startswith("s3://"):
        assert storage.local_path("a/b") is None
        assert storage.presigned_url("a/b", expires=60)
    else:
        assert storage.local_path("a/b") == Path(storage.url) / "a" / "b"
        assert storage.presigned_url("a/b") is None
