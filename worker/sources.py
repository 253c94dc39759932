"""Reading job sources as streams: image keys under an S3 prefix, lines of a manifest.
(Dataset files, CSV and WebDataset, are read by `worker.datasets` on these listings.)

    for uri in list_images(settings, "s3://photos/2024/", start_after=None): ...
    for line in read_lines(settings, storage, "storage:inputs/file_1/manifest.jsonl"): ...

Both are generators that read a page (1000 keys) or a chunk (1 MiB) at a time. A manifest
line longer than `settings.max_manifest_line_bytes` is not held: it comes as a `LongLine`
(its start and length), the rest of it is skipped. An http(s) manifest is read under the
egress policy (`janus_batch.egress`): a refusal says only "refused by the egress policy". Errors are
`SourceError` (permanent: missing bucket, 404, access denied) or `TransientSourceError` /
`TransientStorageError` (after `settings.max_retries` retries with backoff).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from janus_batch.egress import EgressPolicy, EgressRefused, make_client, open_url
from janus_batch.formats import IMAGE_EXTENSIONS
from janus_batch.inputs import STORAGE_REF_HINT, points_into_storage
from janus_batch.s3client import make_s3_client
from janus_batch.settings import Settings
from janus_batch.storage import Storage, parse_s3_uri
from janus_batch.storage.s3 import translate_error
from worker.fetch import retry_transient

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024
LIST_PAGE = 1000
"""Keys per listing request (S3's maximum)."""


class SourceError(Exception):
    """A job's source cannot be read; the job fails with this message."""


class TransientSourceError(SourceError):
    """A source read failed in a way that may heal (5xx, timeout); retry later."""


def is_image_key(key: str) -> bool:
    """Whether a key names an image by its extension (case-insensitive)."""
    return key.lower().endswith(IMAGE_EXTENSIONS)


def key_of(uri: str) -> str:
    """The key of `s3://bucket/key`."""
    return parse_s3_uri(uri)[1]


def s3_client(settings: Settings) -> Any:
    """An S3 client for reading sources (botocore retries off: callers retry)."""
    return make_s3_client(settings.s3_endpoint_url, settings.s3_region, max_attempts=1)


def list_images(
    settings: Settings,
    prefix_uri: str,
    start_after: str | None = None,
    on_page: Callable[[], None] | None = None,
) -> Iterator[str]:
    """`s3://bucket/key` of every image under `prefix_uri` in key order, after `start_after`;
    `on_page` is called before each page is requested. A prefix reaching into the service's
    own storage is refused (SourceError)."""
    return list_objects(
        settings, prefix_uri, is_image_key, start_after, on_page, "source.s3_prefix"
    )


def list_objects(
    settings: Settings,
    prefix_uri: str,
    keep: Callable[[str], bool],
    start_after: str | None = None,
    on_page: Callable[[], None] | None = None,
    field: str = "source",
) -> Iterator[str]:
    """`s3://bucket/key` of every object under `prefix_uri` whose key `keep` accepts, in key
    order, after `start_after`, a page at a time (see `list_images`)."""
    if points_into_storage(prefix_uri, settings.resolved_storage_url(), listing=True):
        raise SourceError(f"{field} '{prefix_uri}' {STORAGE_REF_HINT}")
    try:
        bucket, prefix = parse_s3_uri(prefix_uri, require_key=False)
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    client = s3_client(settings)
    request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": LIST_PAGE}
    if start_after:
        request["StartAfter"] = start_after

    def page() -> dict[str, Any]:
        try:
            return client.list_objects_v2(**request)
        except (ClientError, BotoCoreError) as exc:
            raise translate_error(exc, "list", prefix_uri) from exc

    with closing(client):
        while True:
            if on_page is not None:
                on_page()
            response = retry_transient(page, attempts=settings.max_retries + 1)
            for obj in response.get("Contents", ()):
                if keep(obj["Key"]):
                    yield f"s3://{bucket}/{obj['Key']}"
            if not response.get("IsTruncated"):
                return
            request["ContinuationToken"] = response["NextContinuationToken"]


HEAD_BYTES = 2048
"""How much of an over-long line is kept (to show the user which line it was)."""


@dataclass(frozen=True)
class LongLine:
    """A line over the length limit: its first HEAD_BYTES bytes and its full length."""

    head: bytes
    length: int


def _line(line: bytes, max_line: int | None) -> bytes | LongLine:
    line = line.rstrip(b"\r")
    if max_line is None or len(line) <= max_line:
        return line
    return LongLine(line[:HEAD_BYTES], len(line))


def split_lines(chunks: Iterable[bytes], max_line: int | None = None) -> Iterator[bytes | LongLine]:
    """Lines (without the newline) of a byte stream given in chunks; a last line without a
    newline counts too. A line longer than `max_line` bytes is a LongLine, and no more of it
    than `max_line` plus one chunk is ever held."""
    rest = b""
    head: bytes | None = None  # inside an over-long line: its first HEAD_BYTES bytes,
    length = 0  # its length so far (a final \r included)
    cr = False  # whether what was read of it so far ends with \r
    for chunk in chunks:
        if not chunk:
            continue
        if head is not None:
            end = chunk.find(b"\n")
            piece = chunk if end < 0 else chunk[:end]
            head += piece[: HEAD_BYTES - len(head)]
            length += len(piece)
            if piece:
                cr = piece.endswith(b"\r")
            if end < 0:
                continue
            yield LongLine(head[: length - cr], length - cr)
            head, chunk = None, chunk[end + 1 :]
        rest += chunk
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield _line(line, max_line)
        if max_line is not None and len(rest) > max_line:
            head, length, cr, rest = rest[:HEAD_BYTES], len(rest), rest.endswith(b"\r"), b""
    if head is not None:
        yield LongLine(head[: length - cr], length - cr)
    elif rest:
        yield _line(rest, max_line)


def _read_chunks(stream: Any) -> Iterator[bytes]:
    while chunk := stream.read(READ_CHUNK):
        yield chunk


def read_lines(settings: Settings, storage: Storage, uri: str) -> Iterator[bytes | LongLine]:
    """The lines of the manifest at `uri`: `storage:<key>`, `s3://bucket/key` or http(s);
    a line over `settings.max_manifest_line_bytes` is a LongLine."""
    scheme = uri.partition(":")[0].lower()
    max_line = settings.max_manifest_line_bytes
    if scheme == "storage":
        with closing(storage.open_read(uri[len("storage:") :])) as stream:
            yield from split_lines(_read_chunks(stream), max_line)
    elif scheme == "s3":
        if points_into_storage(uri, settings.resolved_storage_url()):
            raise SourceError(f"source.manifest '{uri}' {STORAGE_REF_HINT}")
        yield from _s3_lines(settings, uri, max_line)
    elif scheme in ("http", "https"):
        yield from _http_lines(uri, EgressPolicy.from_settings(settings), max_line)
    else:
        raise SourceError(f"unsupported manifest URI {uri!r}: use s3://, https:// or a file id")


def _s3_lines(settings: Settings, uri: str, max_line: int) -> Iterator[bytes | LongLine]:
    try:
        bucket, key = parse_s3_uri(uri)
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    client = s3_client(settings)

    def open_body() -> Any:
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"]
        except (ClientError, BotoCoreError) as exc:
            raise translate_error(exc, "read", uri) from exc

    with closing(client):
        body = retry_transient(open_body, attempts=settings.max_retries + 1)
        try:
            with closing(body):
                yield from split_lines(_read_chunks(body), max_line)
        except (ClientError, BotoCoreError) as exc:
            raise translate_error(exc, "read", uri) from exc


def _http_lines(uri: str, egress: EgressPolicy, max_line: int) -> Iterator[bytes | LongLine]:
    try:
        with (
            make_client(egress, max_connections=1) as client,
            open_url(client, egress, uri, timeout=30.0) as response,
        ):
            status = response.status_code
            if status >= 400:
                error = (
                    TransientSourceError if status >= 500 or status in (408, 429) else SourceError
                )
                raise error(f"cannot read {uri}: HTTP {status} {response.reason_phrase}")
            yield from split_lines(response.iter_bytes(READ_CHUNK), max_line)
    except EgressRefused as exc:  # the same words whatever was (or was not) listening there
        log.info("egress refused manifest %s: %s", uri, exc.reason)
        raise SourceError(f"cannot read {uri}: {exc}") from None
    except httpx.TransportError as exc:
        raise TransientSourceError(f"cannot read {uri}: {type(exc).__name__}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise SourceError(f"cannot read {uri}: {exc}") from exc
