"""The S3-compatible backend (AWS, MinIO, R2, Ceph) through boto3, and its error translation."""

from __future__ import annotations

import io
import logging
import mimetypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    SSLError,
)

from janus_batch.s3client import make_s3_client, parse_s3_uri
from janus_batch.storage.base import (
    NotFoundError,
    Storage,
    StorageError,
    TransientStorageError,
    validate_key,
    validate_prefix,
)

logger = logging.getLogger(__name__)

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchUpload"}
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
    "RequestLimitExceeded", "RequestTimeout", "InternalError", "ServiceUnavailable",
}  # fmt: skip


def translate_error(exc: BaseException, action: str, uri: str) -> StorageError:
    """Map a boto3/botocore exception to NotFoundError, TransientStorageError or StorageError."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
        exc = exc.__context__  # boto3's transfer manager hides the ClientError behind this
    where = f"cannot {action} {uri}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        detail = f"{code or 'error'} (HTTP {status})"
        if error.get("Message"):
            detail += f": {error['Message']}"
        if code == "NoSuchBucket":
            bucket = uri[len("s3://") :].partition("/")[0]
            return NotFoundError(f"{where}: bucket {bucket!r} does not exist")
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFoundError(f"{where}: no such object")
        if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
            return TransientStorageError(f"{where}: {detail}")
        return StorageError(f"{where}: {detail}")
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{where}: no AWS credentials found (environment, profile or role)")
    if isinstance(exc, SSLError):  # certificate or TLS setup problems do not heal by retrying
        return StorageError(f"{where}: {exc}")
    if isinstance(exc, (ConnectionError, HTTPClientError, IncompleteReadError)):
        # botocore's text names the endpoint's address: internal, kept for the logs only
        logger.info("%s: %s", where, exc)
        return TransientStorageError(f"{where}: storage unreachable ({type(exc).__name__})")
    return StorageError(f"{where}: {exc}")


def byte_range(start: int = 0, length: int | None = None) -> str | None:
    """The HTTP Range header of `length` bytes from `start` (to the end when None), or None
    for the whole object."""
    if start < 0 or (length is not None and length < 1):
        raise ValueError(f"invalid byte range: start {start}, length {length}")
    if length is None:
        return f"bytes={start}-" if start else None
    return f"bytes={start}-{start + length - 1}"


class S3Storage(Storage):
    """Objects under `s3://bucket/prefix` on AWS or an S3-compatible endpoint."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_pool_connections: int = 16,
        client: Any = None,
    ) -> None:
        self.bucket, prefix = parse_s3_uri(url, require_key=False)
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.endpoint_url = endpoint_url
        self._base = f"{self.prefix}/" if self.prefix else ""
        self._client = client or make_s3_client(
            endpoint_url, region, max_pool_connections=max_pool_connections, retry_mode="adaptive"
        )
        self._transfer = TransferConfig(max_concurrency=max(1, min(10, max_pool_connections)))

    def _key(self, key: str) -> str:
        return self._base + validate_key(key)

    def _extra(self, key: str, content_type: str | None) -> dict[str, str]:
        content_type = content_type or mimetypes.guess_type(key)[0]
        return {"ContentType": content_type} if content_type else {}

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, **self._extra(key, content_type)
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate_error(exc, "write", self.uri(key)) from exc

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        try:
            self._client.upload_file(
                str(path),
                self.bucket,
                self._key(key),
                ExtraArgs=self._extra(key, content_type),
                Config=self._transfer,
            )
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            raise translate_error(exc, f"upload {path} to", self.uri(key)) from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path} to store at {self.uri(key)}: {exc}") from exc

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as body:
            try:
                return body.read()
            except (ClientError, BotoCoreError) as exc:
                raise translate_error(exc, "read", self.uri(key)) from exc

    def open_read(self, key: str, start: int = 0, length: int | None = None) -> BinaryIO:
        """A botocore StreamingBody (of a ranged GET when `start` or `length` is given);
        errors while reading it are botocore's, not translated."""
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if range_header := byte_range(start, length):
            request["Range"] = range_header
        try:
            response = self._client.get_object(**request)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return io.BytesIO()  # start at or past the end: nothing to read
            raise translate_error(exc, "read", self.uri(key)) from exc
        except BotoCoreError as exc:
            raise translate_error(exc, "read", self.uri(key)) from exc
        return cast(BinaryIO, response["Body"])

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            return head
        except (ClientError, BotoCoreError) as exc:
            error = translate_error(exc, "inspect", self.uri(key))
            if isinstance(error, NotFoundError):
                return None  # HEAD answers a bare 404 for a missing bucket too; ping() tells
            raise error from exc

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else int(head["ContentLength"])

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise translate_error(exc, "delete", self.uri(key)) from exc

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        return self._list(self._base + prefix)

    def _list(self, full_prefix: str) -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for obj in page.get("Contents", ()):
                    if not obj["Key"].endswith("/"):  # skip "folder" marker objects
                        yield obj["Key"][len(self._base) :]
        except (ClientError, BotoCoreError) as exc:
            uri = f"s3://{self.bucket}/{full_prefix}"
            raise translate_error(exc, "list", uri) from exc

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def presigned_url(self, key: str, expires: int = 3600) -> str | None:
        try:
            url: str = self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=expires,
            )
            return url
        except (ClientError, BotoCoreError) as exc:
            raise translate_error(exc, "sign a URL for", self.uri(key)) from exc

    def local_path(self, key: str) -> Path | None:
        validate_key(key)
        return None

    def ping(self) -> None:
        where = self.endpoint_url or "AWS"
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            error = translate_error(exc, "reach", self.url)
            if isinstance(error, NotFoundError):
                error = NotFoundError(f"bucket {self.bucket!r} does not exist at {where}")
            raise error from exc
        except BotoCoreError as exc:
            raise translate_error(exc, f"reach S3 at {where} for", self.url) from exc

    def close(self) -> None:
        self._client.close()
