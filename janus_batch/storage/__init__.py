"""Where inputs and results live: one `Storage` interface, a local-folder and an S3 backend.

Open one with `storage_from_settings(get_settings())` or
`open_storage("s3://bucket/jobs", endpoint_url="http://minio:9000")`, then address objects by
relative keys: `storage.put_bytes("42/results.jsonl", data)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from janus_batch.storage.base import (
    NotFoundError,
    Storage,
    StorageError,
    TransientStorageError,
    validate_key,
)
from janus_batch.storage.local import LocalStorage
from janus_batch.storage.s3 import S3Storage, parse_s3_uri

if TYPE_CHECKING:
    from janus_batch.settings import Settings

__all__ = [
    "LocalStorage",
    "NotFoundError",
    "S3Storage",
    "Storage",
    "StorageError",
    "TransientStorageError",
    "open_storage",
    "parse_s3_uri",
    "storage_from_settings",
    "validate_key",
]


def open_storage(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    max_pool_connections: int = 16,
) -> Storage:
    """The backend for `url`: `s3://bucket/prefix`, `file:///folder` or a plain folder path."""
    if url.startswith("s3://"):
        return S3Storage(
            url,
            endpoint_url=endpoint_url,
            region=region,
            max_pool_connections=max_pool_connections,
        )
    scheme, sep, _ = url.partition("://")
    if sep and scheme != "file":
        raise ValueError(f"unsupported storage URL {url!r}: use s3://, file:// or a folder path")
    return LocalStorage(url)


def storage_from_settings(settings: Settings) -> Storage:
    """The storage configured by `settings`, with a pool sized for its transfer threads."""
    return open_storage(
        settings.resolved_storage_url(),
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        max_pool_connections=settings.fetch_concurrency + 2 * settings.upload_concurrency,
    )
