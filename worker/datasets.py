"""The files of a dataset source, listed and opened as streams (`janus_batch.datasets` says
what a source may name).

    for data_file in list_files(settings, refs, "webdataset", resolve_file, on_page=guard):
        with closing(opener.open(data_file, start=0)) as stream: ...

Files come in a fixed order (references in the order given; a prefix or glob in key order; a
brace pattern in its own order), lazily: a listing is read a page at a time and a pattern
expanded as it goes, so a million shards cost no memory. A file is an `s3://` object, read
with the worker's S3 client (ranged GETs from `start`), or an uploaded file (`storage:<key>`),
read through the storage backend. Where a redelivered expand task resumes is given by the
last item's `file` and position (`resume`).
"""

from __future__ import annotations

import fnmatch
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from botocore.exceptions import BotoCoreError, ClientError

from janus_batch import datasets
from janus_batch.inputs import STORAGE_REF_HINT, InvalidInput, points_into_storage
from janus_batch.settings import Settings
from janus_batch.storage import (
    NotFoundError,
    Storage,
    StorageError,
    TransientStorageError,
    parse_s3_uri,
)
from janus_batch.storage.s3 import byte_range, translate_error
from worker import sources
from worker.fetch import retry_transient


@dataclass(frozen=True)
class DataFile:
    """One file of a source: `name` as the user gave it (`s3://...` or a file id), `uri` as
    it is read (`s3://...` or `storage:<key>`)."""

    name: str
    uri: str


def _has_extension(fmt: str) -> Callable[[str], bool]:
    extensions = datasets.EXTENSIONS[fmt]
    return lambda key: key.lower().endswith(extensions)


def list_files(
    settings: Settings,
    refs: Iterable[str],
    fmt: str,
    resolve_file: Callable[[str, str], str],
    on_page: Callable[[], None] | None = None,
) -> Iterator[DataFile]:
    """The files the references name, in order (see the module doc). A reference into the
    service's storage, or an unknown file id, raises SourceError."""
    storage_url = settings.resolved_storage_url()
    for i, ref in enumerate(refs):
        field = f"source.{fmt}[{i}]"
        if ref.startswith("file_"):
            try:
                yield DataFile(ref, resolve_file(ref, field))
            except InvalidInput as exc:
                raise sources.SourceError(str(exc)) from None
        elif ref.endswith("/") or datasets.has_glob(ref):
            for uri in _list_matching(settings, ref, fmt, on_page):
                yield DataFile(uri, uri)
        else:
            names = datasets.expand_braces(ref) if datasets.has_braces(ref) else iter([ref])
            for uri in names:
                if points_into_storage(uri, storage_url):
                    raise sources.SourceError(f"{field} '{uri}' {STORAGE_REF_HINT}")
                yield DataFile(uri, uri)


def _list_matching(
    settings: Settings, ref: str, fmt: str, on_page: Callable[[], None] | None
) -> Iterator[str]:
    field = f"source.{fmt}"
    prefix = datasets.literal_prefix(ref)
    if prefix == ref:  # a plain prefix: the files with the format's extension
        return sources.list_objects(settings, ref, _has_extension(fmt), None, on_page, field)
    pattern = parse_s3_uri(ref, require_key=False)[1]
    return sources.list_objects(
        settings, prefix, lambda key: fnmatch.fnmatchcase(key, pattern), None, on_page, field
    )


class Opener:
    """Opens the files of a source as streams, with one S3 client for all of them."""

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings = settings
        self.storage = storage
        self._client: Any = None

    def open(self, data_file: DataFile, start: int = 0, length: int | None = None) -> BinaryIO:
        """A stream of `data_file` from byte `start` (a start past its end reads nothing), of
        at most `length` bytes when given. NotFoundError / StorageError for a file that
        cannot be read, TransientStorageError after retries."""
        return retry_transient(
            lambda: self._open(data_file, start, length), attempts=self.settings.max_retries + 1
        )

    def size(self, data_file: DataFile) -> int:
        """The size of `data_file` in bytes; NotFoundError if it is missing."""
        return retry_transient(
            lambda: self._size(data_file), attempts=self.settings.max_retries + 1
        )

    def _size(self, data_file: DataFile) -> int:
        if data_file.uri.startswith("storage:"):
            size = self.storage.size(data_file.uri[len("storage:") :])
            if size is None:
                raise NotFoundError(f"cannot read {data_file.name}: no such file")
            return size
        bucket, key = parse_s3_uri(data_file.uri)
        try:
            return int(self._s3().head_object(Bucket=bucket, Key=key)["ContentLength"])
        except (ClientError, BotoCoreError) as exc:
            raise translate_error(exc, "read", data_file.name) from exc

    def _s3(self) -> Any:
        if self._client is None:
            self._client = sources.s3_client(self.settings)
        return self._client

    def _open(self, data_file: DataFile, start: int, length: int | None) -> BinaryIO:
        if data_file.uri.startswith("storage:"):
            return self.storage.open_read(data_file.uri[len("storage:") :], start, length)
        bucket, key = parse_s3_uri(data_file.uri)
        request: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if header := byte_range(start, length):
            request["Range"] = header
        self._s3()
        try:
            return cast(BinaryIO, self._client.get_object(**request)["Body"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return io.BytesIO()
            raise translate_error(exc, "read", data_file.name) from exc
        except BotoCoreError as exc:
            raise translate_error(exc, "read", data_file.name) from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class ChunkReader(io.RawIOBase):
    """A raw stream over anything with `read(n)` (a botocore body), so `io.TextIOWrapper`
    can decode it; errors while reading are translated to storage errors naming `name`."""

    def __init__(self, stream: Any, name: str) -> None:
        self._stream = stream
        self._name = name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._stream.read(len(buffer))
        except (ClientError, BotoCoreError) as exc:
            raise translate_error(exc, "read", self._name) from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            super().close()


def resume(
    files: Iterator[DataFile], last: dict[str, Any] | None, position: str
) -> Iterator[tuple[DataFile, Any]]:
    """(file, where to start in it) from where the last item (`last`, an item input with
    `file` and `position`) left off: files before its file are skipped, its file resumes
    after `last[position]` (None: the file was done), later files start at the beginning
    (None). SourceError if the last item's file is no longer among the files."""
    if last is None or "file" not in last:
        yield from ((f, None) for f in files)
        return
    for data_file in files:
        if data_file.name == last["file"]:
            break
    else:
        raise sources.SourceError(
            f"the source changed while it was expanded: {last['file']} is no longer in it"
        )
    if last.get(position) is not None:
        yield data_file, last[position]
    yield from ((f, None) for f in files)


def file_error(exc: StorageError) -> bool:
    """Whether a storage error fails one file (an item) rather than interrupting the
    expansion: permanent ones do, transient ones are raised for the sweeper to resume."""
    return not isinstance(exc, TransientStorageError)
