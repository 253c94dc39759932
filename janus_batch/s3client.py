"""The one S3 client builder and `s3://` parser: boto3 only, so the CLI can use it too.

Everything that talks to S3 (the storage backend, the worker's fetches and source listings,
the CLI's download of `s3://` inputs) builds its client here.
"""

from __future__ import annotations

import re
from typing import Any

import boto3
from botocore.config import Config

_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def parse_s3_uri(uri: str, *, require_key: bool = True) -> tuple[str, str]:
    """Split `s3://bucket/key` into (bucket, key); ValueError if malformed.

    The key is kept verbatim (it may hold '?', '#' or '%'). With `require_key=False` a bare
    `s3://bucket` or `s3://bucket/prefix/` is accepted and the key may be empty.
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise ValueError(f"S3 URI has no valid bucket name: {uri!r}")
    if require_key and not key:
        raise ValueError(f"S3 URI has no object key: {uri!r}")
    return bucket, key


def make_s3_client(
    endpoint_url: str | None = None,
    region: str | None = None,
    *,
    max_pool_connections: int = 16,
    max_attempts: int = 3,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    retry_mode: str = "standard",
) -> Any:
    """A thread-safe boto3 S3 client; credentials come from boto3's normal chain.

    A custom endpoint (MinIO, Ceph, a compose service name) gets path-style addressing, since
    `bucket.host` names rarely resolve there. Checksums only when the operation requires them,
    which S3-compatible servers handle best. `retry_mode="adaptive"` adds botocore's
    client-side rate limiting when the server throttles (SlowDown): the storage backend's
    writers slow down together instead of failing.
    """
    config = Config(
        retries={"mode": retry_mode, "max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        signature_version="s3v4",
        s3={"addressing_style": "path"} if endpoint_url else None,
        user_agent_extra="janus-batch",
    )
    session = boto3.session.Session(region_name=region)  # a session per client: thread-safe
    return session.client("s3", endpoint_url=endpoint_url, config=config)
