"""Keys are held to S3's limits (1024 UTF-8 bytes, 255 per segment), and a local path the
OS finds too long reads as missing, not as an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from janus_batch.storage import LocalStorage, NotFoundError, StorageError, validate_key
from janus_batch.storage.base import KeyTooLongError


@pytest.mark.parametrize(
    "key",
    [
        "x" * 5000,
        "a/" + "x" * 256,
        "a/" + "é" * 128,  # 256 bytes
        "/".join(["abcdefgh"] * 120),  # 1079 bytes, every segment short
    ],
)
def test_too_long_keys_are_invalid(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="storage key"):
        validate_key(key)
    with pytest.raises(KeyTooLongError):
        validate_key(key)
    storage = LocalStorage(tmp_path)
    assert not storage.exists(key)
    assert storage.size(key) is None
    with pytest.raises(NotFoundError):
        storage.get_bytes(key)
    with pytest.raises(StorageError):
        storage.put_bytes(key, b"x")


def test_keys_at_the_limits_are_valid(tmp_path: Path) -> None:
    longest_segment = "a/" + "é" * 127 + "x"  # 255 bytes
    longest_key = "/".join(["x" * 255] * 3 + ["y" * 200, "z" * 55])  # 1024 bytes
    assert len(longest_key.encode()) == 1024
    for key in (longest_segment, longest_key):
        assert validate_key(key) == key
    storage = LocalStorage(tmp_path)
    storage.put_bytes(longest_segment, b"ok")
    assert storage.get_bytes(longest_segment) == b"ok"


def test_a_path_too_long_for_the_os_is_missing(tmp_path: Path) -> None:
    root = tmp_path.joinpath(*["d" * 250] * 16)  # over PATH_MAX with any key
    storage = LocalStorage(root)
    key = "images/" + "x" * 250 + ".png"
    assert not storage.exists(key)
    assert storage.size(key) is None
    with pytest.raises(NotFoundError):
        storage.open_read(key)
