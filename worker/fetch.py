"""Fetch worker inputs by URI, concurrently and with retries of transient errors.

Supported URIs: `s3://bucket/key` (any bucket, on the configured endpoint), `http(s)://...`,
`file:///abs/path` or a plain absolute path, and `storage:<key>` (a key in the configured
storage, e.g. an uploaded file under `inputs/`).

    data = fetch_uri("s3://photos/cat.jpg", storage=storage, endpoint_url=..., max_retries=3)
    results = fetch_many(uris, concurrency=8, storage=storage)  # bytes or FetchError, in order
    member = fetch_uri("s3://b/shards/00001.tar", byte_range=(offset, size), ...)

`byte_range=(offset, size)` reads only those bytes of an `s3://` or `storage:` object (a ranged
GET): how a WebDataset sample is read from inside its shard.

`http(s)` URLs go through the egress policy (`janus_batch.egress`, `egress=`; by default
https only and public addresses only), redirects included: a refusal is a permanent
FetchError saying only "refused by the egress policy", whatever is at the address. The
`s3://` endpoint is the operator's (JANUS_BATCH_S3_ENDPOINT_URL): a user names only the bucket
and key, never where they are.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from janus_batch.egress import EgressPolicy, EgressRefused, make_client, open_url
from janus_batch.s3client import make_s3_client
from janus_batch.storage import (
    Storage,
    StorageError,
    TransientStorageError,
    parse_s3_uri,
)
from janus_batch.storage.local import path_from_url
from janus_batch.storage.s3 import byte_range as range_header
from janus_batch.storage.s3 import translate_error

__all__ = [
    "MAX_BYTES",
    "FetchError",
    "fetch_many",
    "fetch_uri",
    "is_transient",
    "parse_s3_uri",
    "retry_transient",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BYTES = 64 * 1024 * 1024
"""Default largest input accepted (64 MiB)."""

_CHUNK = 1024 * 1024


class FetchError(Exception):
    """An input could not be fetched; `permanent` is False when a later retry may succeed;
    `storage` is True when the failing party is storage (`s3://` at the configured endpoint
    or `storage:`), not an input's own host: a transient one pauses the worker's new work."""

    def __init__(self, message: str, permanent: bool, storage: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.storage = storage

    def __reduce__(self) -> tuple[Any, ...]:  # keep the flags through pickling (Celery)
        return (type(self), (str(self), self.permanent, self.storage))


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is worth retrying: a TransientStorageError or a non-permanent FetchError."""
    if isinstance(exc, FetchError):
        return not exc.permanent
    return isinstance(exc, TransientStorageError)


def retry_transient(
    fn: Callable[[], T],
    attempts: int = 4,
    base_delay: float = 0.5,
    *,
    max_delay: float = 10.0,
    should_retry: Callable[[BaseException], bool] = is_transient,
) -> T:
    """Call `fn` up to `attempts` times, sleeping with exponential backoff and jitter between
    tries while it raises a transient error; the last error (or any permanent one) propagates.
    """
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not should_retry(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            logger.info(
                "attempt %d/%d failed, retrying in %.2fs: %s", attempt, attempts, delay, exc
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def fetch_uri(
    uri: str,
    *,
    storage: Storage | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    max_retries: int = 3,
    timeout: float = 30.0,
    max_bytes: int = MAX_BYTES,
    base_delay: float = 0.5,
    egress: EgressPolicy | None = None,
    byte_range: tuple[int, int] | None = None,
) -> bytes:
    """The bytes at `uri` (only `byte_range` = (offset, size) of them when given), retrying
    transient errors `max_retries` times; FetchError otherwise. `egress` is the policy of
    http(s) URLs (default: EgressPolicy(), the strictest)."""
    fetch = _fetcher(uri, storage, endpoint_url, region, timeout, max_bytes, egress, byte_range)
    attempts = max_retries + 1
    try:
        return retry_transient(fetch, attempts, base_delay)
    except FetchError as exc:
        if exc.permanent or attempts == 1:
            raise
        raise FetchError(
            f"{exc} (gave up after {attempts} attempts)", permanent=False, storage=exc.storage
        ) from exc


def fetch_many(
    uris: list[str],
    *,
    concurrency: int,
    ranges: list[tuple[int, int] | None] | None = None,
    **kw: Any,
) -> list[bytes | FetchError]:
    """Fetch `uris` (the `ranges[i]` of `uris[i]` where given) with `concurrency` threads;
    results in input order, errors returned."""
    spans = ranges if ranges is not None else [None] * len(uris)

    def one(uri: str, span: tuple[int, int] | None) -> bytes | FetchError:
        try:
            return fetch_uri(uri, byte_range=span, **kw)
        except FetchError as exc:
            return exc
        except Exception as exc:  # a bug must not sink the other inputs of the chunk
            logger.exception("unexpected error fetching %s", _show(uri))
            return FetchError(f"cannot fetch {_show(uri)}: {exc!r}", permanent=True)

    if not uris:
        return []
    workers = max(1, min(concurrency, len(uris)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="janus-fetch") as pool:
        return list(pool.map(one, uris, spans))


def _fetcher(
    uri: str,
    storage: Storage | None,
    endpoint_url: str | None,
    region: str | None,
    timeout: float,
    max_bytes: int,
    egress: EgressPolicy | None,
    byte_range: tuple[int, int] | None = None,
) -> Callable[[], bytes]:
    """The one-attempt fetch function for `uri`'s scheme; permanent FetchError if unsupported."""
    scheme = uri.partition(":")[0].lower() if isinstance(uri, str) else ""
    if byte_range is not None and scheme not in ("storage", "s3"):
        raise FetchError(f"cannot fetch a byte range of {_show(uri)}", permanent=True)
    if scheme == "storage":
        if storage is None:
            raise FetchError(f"cannot fetch {_show(uri)}: no storage configured", permanent=True)
        return lambda: _fetch_storage(uri, storage, max_bytes, byte_range)
    if scheme == "s3":
        return lambda: _fetch_s3(uri, endpoint_url, region, timeout, max_bytes, byte_range)
    if scheme in ("http", "https"):
        return lambda: _fetch_http(uri, timeout, max_bytes, egress or EgressPolicy())
    if scheme == "file" or (isinstance(uri, str) and os.path.isabs(uri)):
        return lambda: _fetch_file(uri, max_bytes)
    raise FetchError(
        f"unsupported input URI {_show(uri)}: use s3://, http(s)://, file://, an absolute path "
        "or storage:<key>",
        permanent=True,
    )


def _fetch_storage(
    uri: str, storage: Storage, max_bytes: int, byte_range: tuple[int, int] | None
) -> bytes:
    key = uri[len("storage:") :]
    start, length = byte_range or (0, None)
    try:
        _check_size(length, max_bytes, uri)
        with storage.open_read(key, start, length) as f:
            return _read_limited(f, max_bytes, uri)
    except ValueError as exc:
        raise FetchError(f"invalid input {_show(uri)}: {exc}", permanent=True) from exc
    except StorageError as exc:
        raise _from_storage_error(exc, uri) from exc
    except (ClientError, BotoCoreError) as exc:  # raised while streaming an S3 body
        raise _from_storage_error(translate_error(exc, "read", uri), uri) from exc


@lru_cache(maxsize=16)
def _s3_client(endpoint_url: str | None, region: str | None, timeout: float) -> Any:
    """One client per endpoint and region, shared by all threads. botocore does not retry
    here (max_attempts=1): retry_transient is the only retry layer, so attempts do not multiply.
    """
    return make_s3_client(
        endpoint_url,
        region,
        max_pool_connections=64,
        max_attempts=1,
        connect_timeout=min(timeout, 10.0),
        read_timeout=timeout,
    )


def _fetch_s3(
    uri: str,
    endpoint_url: str | None,
    region: str | None,
    timeout: float,
    max_bytes: int,
    byte_range: tuple[int, int] | None = None,
) -> bytes:
    try:
        bucket, key = parse_s3_uri(uri)
    except ValueError as exc:
        raise FetchError(str(exc), permanent=True) from exc
    request = {"Bucket": bucket, "Key": key}
    if byte_range is not None:
        _check_size(byte_range[1], max_bytes, uri)
        request["Range"] = str(range_header(*byte_range))
    try:
        response = _s3_client(endpoint_url, region, timeout).get_object(**request)
        with closing(response["Body"]) as body:
            _check_size(response.get("ContentLength"), max_bytes, uri)
            return _read_limited(body, max_bytes, uri)
    except (ClientError, BotoCoreError) as exc:
        raise _from_storage_error(translate_error(exc, "fetch", uri), uri) from exc


@lru_cache(maxsize=8)
def _http_client(egress: EgressPolicy) -> httpx.Client:
    """One pooled HTTP client per process and policy, shared by the fetch threads."""
    return make_client(egress, max_connections=64)


def _forget_clients() -> None:
    """Drop pooled clients in a forked child: sockets must not be shared with the parent."""
    _s3_client.cache_clear()
    _http_client.cache_clear()


os.register_at_fork(after_in_child=_forget_clients)


def _fetch_http(uri: str, timeout: float, max_bytes: int, egress: EgressPolicy) -> bytes:
    try:
        with open_url(_http_client(egress), egress, uri, timeout=timeout) as response:
            status = response.status_code
            if status >= 400:
                transient = status >= 500 or status in (408, 429)
                raise FetchError(
                    f"cannot fetch {_show(uri)}: HTTP {status} {response.reason_phrase}",
                    permanent=not transient,
                )
            length = response.headers.get("content-length", "")
            _check_size(int(length) if length.isdigit() else None, max_bytes, uri)
            data = bytearray()
            for chunk in response.iter_bytes(_CHUNK):
                data += chunk
                _check_size(len(data), max_bytes, uri)
            return bytes(data)
    except EgressRefused as exc:  # the same words whatever was (or was not) listening there
        logger.info("egress refused %s: %s", _show(uri), exc.reason)
        raise FetchError(f"cannot fetch {_show(uri)}: {exc}", permanent=True) from None
    except httpx.UnsupportedProtocol as exc:
        raise FetchError(f"cannot fetch {_show(uri)}: {exc}", permanent=True) from exc
    except httpx.TransportError as exc:  # refused, reset, timeouts, broken responses
        raise FetchError(
            f"cannot fetch {_show(uri)}: {type(exc).__name__}: {exc}", permanent=False
        ) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # too many redirects, bad URL, ...
        raise FetchError(f"cannot fetch {_show(uri)}: {exc}", permanent=True) from exc


def _fetch_file(uri: str, max_bytes: int) -> bytes:
    try:
        path = path_from_url(uri) if uri.lower().startswith("file:") else Path(uri)
        with open(path, "rb") as f:
            _check_size(os.fstat(f.fileno()).st_size, max_bytes, uri)
            return _read_limited(f, max_bytes, uri)
    except ValueError as exc:
        raise FetchError(f"invalid input {_show(uri)}: {exc}", permanent=True) from exc
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise FetchError(f"cannot fetch {_show(uri)}: no such file", permanent=True) from exc
    except PermissionError as exc:
        raise FetchError(f"cannot fetch {_show(uri)}: permission denied", permanent=True) from exc
    except OSError as exc:  # EIO, a stale network mount: may heal
        raise FetchError(f"cannot fetch {_show(uri)}: {exc}", permanent=False) from exc


def _read_limited(stream: BinaryIO, max_bytes: int, uri: str) -> bytes:
    """Read `stream` to the end, failing permanently as soon as it exceeds `max_bytes`."""
    data = bytearray()
    while chunk := stream.read(min(_CHUNK, max_bytes + 1 - len(data))):
        data += chunk
        _check_size(len(data), max_bytes, uri)
    return bytes(data)


def _check_size(size: int | None, max_bytes: int, uri: str) -> None:
    if size is not None and size > max_bytes:
        raise FetchError(
            f"input {_show(uri)} is larger than the {max_bytes:,}-byte limit", permanent=True
        )


def _from_storage_error(exc: StorageError, uri: str) -> FetchError:
    message = str(exc) if uri in str(exc) else f"cannot fetch {_show(uri)}: {exc}"
    return FetchError(message, permanent=not isinstance(exc, TransientStorageError), storage=True)


def _show(uri: object, limit: int = 300) -> str:
    """`uri` for messages, cut short if huge."""
    text = str(uri)
    return text if len(text) <= limit else text[:limit] + "..."
