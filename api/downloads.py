"""Sending a stored object to the client: a file response for local storage, a stream for S3."""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import quote

from fastapi import Response
from fastapi.responses import FileResponse, StreamingResponse

from api.errors import HttpError
from janus_batch.models import Job
from janus_batch.storage import NotFoundError, Storage, validate_key

READ_CHUNK = 1 << 16
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
"""Raster images a browser shows as pictures and never runs; anything else is a download."""


def iter_body(body: BinaryIO) -> Iterator[bytes]:
    """Read a binary stream in blocks, closing it at the end."""
    try:
        while chunk := body.read(READ_CHUNK):
            yield chunk
    finally:
        body.close()


def content_disposition(media_type: str, filename: str | None, inline: bool) -> str:
    """`inline` for a raster image the service wrote itself (`inline`), else `attachment`;
    with the file name, quoted so that no name can break the header."""
    kind = "inline" if inline and media_type in INLINE_TYPES else "attachment"
    if not filename:
        return kind
    quoted = quote(filename, safe="")
    if quoted == filename:
        return f'{kind}; filename="{filename}"'
    return f"{kind}; filename*=utf-8''{quoted}"


def object_response(
    storage: Storage,
    key: str,
    *,
    missing: str,
    field: str,
    media_type: str | None = None,
    filename: str | None = None,
    written_here: bool = True,
) -> Response:
    """The object at `key`, or a 404 carrying `missing` (naming `field`). Only a raster image
    the service wrote itself (`written_here`: a generated image, not an upload) is served
    inline; everything else is an attachment, never rendered on the API's origin."""
    media_type = media_type or mimetypes.guess_type(key)[0] or "application/octet-stream"
    headers = {"Content-Disposition": content_disposition(media_type, filename, written_here)}
    path = storage.local_path(key)
    if path is not None:
        if not path.is_file():
            raise HttpError(404, missing, field)
        return FileResponse(path, media_type=media_type, headers=headers)
    try:
        body = storage.open_read(key)
    except NotFoundError:
        raise HttpError(404, missing, field) from None
    return StreamingResponse(iter_body(body), media_type=media_type, headers=headers)


def job_output_key(job: Job, key: str) -> str | None:
    """The full storage key of `key` (full, or relative to the job's prefix), or None when
    it is not a valid key under the job's prefix."""
    prefix = f"{job.output_prefix}/"
    full = key if key.startswith(prefix) else prefix + key
    try:
        validate_key(full)
    except ValueError:
        return None
    return full
