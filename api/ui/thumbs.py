"""Small JPEG thumbnails for the dashboard, cached in storage next to the job's outputs.

- `/ui/thumbs/{job_id}/{key}`: an output image of the job (a key under the job's prefix, or
  relative to it); nothing outside the prefix can be named.
- `/ui/shard-images/{job_id}/{idx}/{k}`: image `k` of a generate item stored inside a
  WebDataset shard (`params.output`), read by a ranged GET of its member alone; with `size`,
  its thumbnail.
- `/ui/inputs/{job_id}/{idx}`: the input image of a caption item when it is in the service's
  own storage (an upload, `storage:<key>`; a sample of an uploaded shard by its byte range
  alone). The API never fetches a user's URL or `s3://` reference (that is the workers' job,
  under the egress policy), nor reads a parquet file: those have no thumbnail.

Images are opened by the workers' guard (`janus_batch.images.open_bounded`): one over
JANUS_BATCH_MAX_IMAGE_PIXELS is never decoded (422 naming the limit), a JPEG decodes at a
reduced scale and a large image is reduced before it is resized; its pixels are then
normalised as the model's inputs are (`janus_batch.images.to_rgb`: EXIF orientation, alpha
on white, 16-bit and float grey scaled from their range).

Sizes are clamped to 32..512 and snapped down to a few steps, so the cache
(`<job prefix>/thumbs/<size>/<key>.jpg`) holds at most a few variants of each image.
"""

from __future__ import annotations

import logging
import mimetypes
from contextlib import closing
from io import BytesIO
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from PIL import Image, UnidentifiedImageError

from api.deps import DatabaseUrl, Owner, SettingsDep, StorageDep
from api.downloads import job_output_key
from api.errors import HttpError
from janus_batch import jobs
from janus_batch.images import ImageTooLarge, open_bounded, to_rgb
from janus_batch.models import Job
from janus_batch.states import JobKind
from janus_batch.storage import NotFoundError, Storage, StorageError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/ui", include_in_schema=False)

SIZES = (32, 64, 96, 128, 192, 256, 384, 512)
MAX_SOURCE_BYTES = 64 * 1024 * 1024
CACHE_CONTROL = "private, max-age=86400"
STORED = "storage:"
JPEG_QUALITY = 82

JobId = Annotated[str, Path(max_length=64)]
Size = Annotated[int, Query(description="Longest side in pixels (32..512).")]


class NotAnImage(ValueError):
    """The bytes could not be decoded as an image, or it has too many pixels to decode."""


def snap_size(size: int) -> int:
    """Clamp to 32..512, then round down to a cached step."""
    size = min(max(size, SIZES[0]), SIZES[-1])
    return max(s for s in SIZES if s <= size)


def make_thumbnail(data: bytes, size: int, max_pixels: int) -> bytes:
    """A JPEG whose longest side is at most `size`, from any image Pillow can read of at
    most `max_pixels` pixels (checked before decoding; NotAnImage otherwise)."""
    try:
        with open_bounded(data, max_pixels=max_pixels, size=size) as source:
            img = to_rgb(source)  # what the model sees: a 16-bit grey scan is not white
            img.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
            out = BytesIO()
            img.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
            return out.getvalue()
    except ImageTooLarge as exc:
        raise NotAnImage(f"is too large to preview: {exc}") from exc
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise NotAnImage(f"is not an image Pillow can read ({exc})") from exc


def _jpeg(data: bytes, cache: str) -> Response:
    headers = {"Cache-Control": CACHE_CONTROL, "X-Thumbnail-Cache": cache}
    return Response(data, media_type="image/jpeg", headers=headers)


def _cached(storage: Storage, key: str) -> bytes | None:
    try:
        return storage.get_bytes(key)
    except NotFoundError:
        return None
    except StorageError as exc:  # the cache is an optimisation: go on without it
        log.warning("thumbnail cache unreadable at %s: %s", key, exc)
        return None


def _store(storage: Storage, key: str, data: bytes) -> None:
    try:
        storage.put_bytes(key, data, "image/jpeg")
    except StorageError as exc:
        log.warning("thumbnail not cached at %s: %s", key, exc)


def _thumbnail_or_422(data: bytes, size: int, max_pixels: int, what: str, field: str) -> bytes:
    try:
        return make_thumbnail(data, size, max_pixels)
    except NotAnImage as exc:
        raise HttpError(422, f"{what} {exc}", field) from None


def output_key(job: Job, key: str) -> str:
    """The full storage key of `key` (full or relative to the job's prefix); 404 unless it
    is under the job's prefix and not itself a thumbnail."""
    full = job_output_key(job, key)
    if full is None or full.startswith(f"{job.output_prefix}/thumbs/"):
        raise HttpError(404, f"job {job.id} has no file {key!r}", "key")
    return full


@router.get("/thumbs/{job_id}/{key:path}", name="ui_thumb")
def output_thumbnail(
    job_id: JobId,
    key: str,
    db: DatabaseUrl,
    owner: Owner,
    storage: StorageDep,
    settings: SettingsDep,
    size: Size = 256,
) -> Response:
    """A thumbnail of one of the job's output images."""
    job = jobs.get_job(db, owner, job_id)
    full = output_key(job, key)
    size = snap_size(size)
    relative = full[len(job.output_prefix) + 1 :]
    cache_key = f"{job.output_prefix}/thumbs/{size}/{relative}.jpg"
    if (hit := _cached(storage, cache_key)) is not None:
        return _jpeg(hit, "hit")
    length = storage.size(full)
    if length is None:
        raise HttpError(404, f"job {job_id} has no file {relative!r}", "key")
    if length > MAX_SOURCE_BYTES:
        raise HttpError(413, f"{relative} is too large to preview ({length:,} bytes)", "key")
    data = storage.get_bytes(full)
    thumb = _thumbnail_or_422(data, size, settings.max_image_pixels, relative, "key")
    _store(storage, cache_key, thumb)
    return _jpeg(thumb, "miss")


@router.get("/shard-images/{job_id}/{idx}/{k}", name="ui_shard_image")
def shard_image(
    job_id: JobId,
    idx: Annotated[int, Path(ge=0, le=2**31 - 1)],
    k: Annotated[int, Path(ge=0, le=1024)],
    db: DatabaseUrl,
    owner: Owner,
    storage: StorageDep,
    settings: SettingsDep,
    size: Annotated[int | None, Query(description="Longest side (32..512): a thumbnail.")] = None,
) -> Response:
    """Image `k` of generate item `idx` from inside its shard (the member's bytes alone), or
    with `size` a cached thumbnail of it."""
    job = jobs.get_job(db, owner, job_id)
    page, _ = jobs.list_items(db, owner, job_id, after=idx - 1, limit=1)
    images = (page[0].result or {}).get("images") or [] if page and page[0].idx == idx else []
    entry = next((e for e in images if isinstance(e, dict) and e.get("index") == k), None)
    if job.kind != JobKind.GENERATE or entry is None or not entry.get("member"):
        raise HttpError(404, f"job {job_id} has no image {k} of item {idx} in a shard", "idx")
    member = str(entry["member"])
    cache_key = None
    if size is not None:
        size = snap_size(size)
        cache_key = f"{job.output_prefix}/thumbs/{size}/shards/{member}.jpg"
        if (hit := _cached(storage, cache_key)) is not None:
            return _jpeg(hit, "hit")
    offset, length = (int(v) for v in entry["range"])
    if length > MAX_SOURCE_BYTES:
        raise HttpError(413, f"{member} is too large to preview ({length:,} bytes)", "idx")
    key = output_key(job, str(entry["key"]))
    try:
        with storage.open_read(key, offset, length) as body:
            data = body.read()
    except NotFoundError:
        raise HttpError(404, f"the shard of {member} is no longer stored", "idx") from None
    except StorageError as exc:
        raise HttpError(502, f"{member} could not be read: {exc}", "idx") from None
    if cache_key is None or size is None:
        media_type = mimetypes.guess_type(member)[0] or "application/octet-stream"
        return Response(data, media_type=media_type, headers={"Cache-Control": CACHE_CONTROL})
    thumb = _thumbnail_or_422(data, size, settings.max_image_pixels, member, "idx")
    _store(storage, cache_key, thumb)
    return _jpeg(thumb, "miss")


@router.get("/inputs/{job_id}/{idx}", name="ui_input_thumb")
def input_thumbnail(
    job_id: JobId,
    idx: Annotated[int, Path(ge=0, le=2**31 - 1)],
    db: DatabaseUrl,
    owner: Owner,
    storage: StorageDep,
    settings: SettingsDep,
    size: Size = 128,
) -> Response:
    """A thumbnail of a caption item's input image."""
    job = jobs.get_job(db, owner, job_id)
    page, _ = jobs.list_items(db, owner, job_id, after=idx - 1, limit=1)
    if job.kind != JobKind.CAPTION or not page or page[0].idx != idx:
        raise HttpError(404, f"job {job_id} has no input image {idx}", "idx")
    size = snap_size(size)
    cache_key = f"{job.output_prefix}/thumbs/{size}/inputs/{idx:08d}.jpg"
    if (hit := _cached(storage, cache_key)) is not None:
        return _jpeg(hit, "hit")
    data = _input_bytes(storage, page[0].input, idx)
    thumb = _thumbnail_or_422(data, size, settings.max_image_pixels, f"input {idx}", "idx")
    _store(storage, cache_key, thumb)
    return _jpeg(thumb, "miss")


def _input_bytes(storage: Storage, value: dict[str, Any], idx: int) -> bytes:
    """The bytes of an item's input image when it is in the service's storage, at most
    MAX_SOURCE_BYTES, read as such: the member's byte range of an uploaded WebDataset shard
    (never the shard), the object's size checked before it is read. An image inside an
    uploaded parquet file has no preview (reading it takes the file's footer and a row group's
    column: a worker's job). 404 when there is nothing to show, 422 when it is too large."""
    uri = str(value.get("uri") or value.get("image") or "")
    if not uri.startswith(STORED) or value.get("parquet") is not None:
        raise HttpError(404, f"input {idx} is not in the service's storage: no preview", "idx")
    key = uri[len(STORED) :]
    start, length = 0, None
    try:
        if isinstance(value.get("range"), list) and len(value["range"]) == 2:
            start, length = (int(n) for n in value["range"])
        else:
            length = storage.size(key)
            if length is None:
                raise NotFoundError(key)
        if length > MAX_SOURCE_BYTES:
            raise HttpError(422, f"input {idx} is too large to preview ({length:,} bytes)", "idx")
        with closing(storage.open_read(key, start, length)) as stream:
            data = stream.read(length + 1)
    except NotFoundError:
        raise HttpError(404, f"input {idx} is no longer stored", "idx") from None
    except StorageError as exc:
        raise HttpError(502, f"input {idx} could not be read: {exc}", "idx") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise HttpError(422, f"input {idx} is too large to preview", "idx")
    return data
