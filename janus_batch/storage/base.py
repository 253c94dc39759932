"""The storage interface every backend implements, its errors, and key validation.

A key is a '/'-separated path relative to the storage's base (`s3://bucket/prefix` or a local
folder), e.g. `jobs/42/images/00000007_0.png`. Keys are the same on every backend, so a key
written locally means the same object on S3.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Self


class StorageError(Exception):
    """A storage operation failed."""


class TransientStorageError(StorageError):
    """A failure that may go away on retry (connection lost, timeout, 5xx, throttling)."""


class NotFoundError(StorageError):
    """The key, object or bucket does not exist."""


class KeyTooLongError(NotFoundError, ValueError):
    """A key over S3's length limits: invalid (a ValueError, like every bad key), and since no
    object can have it, also "not found" for the callers that only handle storage errors."""


MAX_KEY_BYTES = 1024
"""S3's limit on a whole key (UTF-8 bytes)."""
MAX_SEGMENT_BYTES = 255
"""The longest segment (file name) local file systems accept, in UTF-8 bytes."""


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative key, else raise ValueError.

    Rejected: empty keys, absolute paths, backslashes, NUL, empty, `.` or `..` segments,
    keys over 1024 UTF-8 bytes (S3's limit) and segments over 255 bytes (a file name's).
    The rules are strict on purpose so that a key names the same thing on every backend.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"storage key must be a non-empty string, got {key!r}")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"storage key must be a relative '/'-separated path, got {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"storage key has an empty, '.' or '..' segment: {key!r}")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise KeyTooLongError(f"storage key is {size} bytes; the limit is {MAX_KEY_BYTES}")
    if any(
        len(part.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for part in key.split("/")
    ):
        raise KeyTooLongError(
            f"storage key has a segment over {MAX_SEGMENT_BYTES} bytes: {key[:80]!r}..."
        )
    return key


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if it is a valid listing prefix ('' or a key, maybe ending in '/')."""
    if prefix:
        validate_key(prefix.removesuffix("/"))
    return prefix


class Storage(ABC):
    """Objects under one base location, addressed by relative keys. Safe to share across threads."""

    url: str
    """The base location: `s3://bucket/prefix` or an absolute folder path."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Write `data` at `key`, replacing any existing object."""

    @abstractmethod
    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        """Write the file at `path` to `key` (multipart on S3 for big files)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read the whole object at `key`; NotFoundError if missing."""

    @abstractmethod
    def open_read(self, key: str, start: int = 0, length: int | None = None) -> BinaryIO:
        """Open `key` for a streaming read from byte `start`, of at most `length` bytes (the
        rest when None): a ranged GET on S3, a seek locally. The caller closes it.
        NotFoundError if missing; a `start` at or past the end reads nothing."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at `key`."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None if it does not exist."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete `key`; deleting a missing key is not an error."""

    @abstractmethod
    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys starting with `prefix` in sorted order, streamed page by page."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """The full URI of `key`: `s3://bucket/prefix/key` or `file:///abs/path`."""

    @abstractmethod
    def presigned_url(self, key: str, expires: int = 3600) -> str | None:
        """A time-limited HTTP GET URL for `key`, or None if the backend has none (local)."""

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """The file behind `key` for the local backend, None for remote ones."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StorageError with a readable message unless the storage is usable."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the storage must not be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
