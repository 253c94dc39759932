"""Uploaded files (images to caption, JSONL manifests, dataset files): storing, deduplicating,
resolving ids.

An upload is streamed to a temporary file while its size and SHA-256 are counted, so a big
one never sits in memory and an oversized one is refused as soon as it passes the limit.
It is stored at `inputs/<owner>/<sha256>/<safe filename>`; the same bytes uploaded again by
the same owner (for the same purpose) return the existing file, which makes folder uploads
resumable. Jobs refer to files by id; `resolve_file_ref` turns an id into `storage:<key>`.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, BinaryIO

from sqlalchemy import delete, select

from janus_batch import quotas
from janus_batch.db import session_scope
from janus_batch.inputs import InvalidInput, TooLarge, iter_jsonl
from janus_batch.models import File, new_id, utcnow
from janus_batch.settings import Settings, get_settings
from janus_batch.storage import Storage

log = logging.getLogger(__name__)

PURPOSES = ("image", "manifest", "dataset")
"""`dataset`: a CSV or parquet file or a WebDataset shard, read as it is by a dataset source."""
FILE_ID_RE = re.compile(r"file_[0-9a-f]{24}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
STORAGE_SCHEME = "storage:"
_COPY_CHUNK = 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(filename: str | None) -> str:
    """A storage-safe file name: the base name with anything unusual replaced by `_`."""
    base = re.split(r"[/\\]", filename or "")[-1]
    safe = _UNSAFE.sub("_", base).lstrip(".")[:200]
    return safe or "upload"


def upload_key(owner: str, sha256: str, filename: str | None) -> str:
    """Where an upload is stored: `inputs/<owner>/<sha256>/<safe filename>`."""
    return f"inputs/{owner}/{sha256}/{safe_filename(filename)}"


def _spool(stream: BinaryIO, dest: IO[bytes], max_bytes: int) -> tuple[int, str]:
    """Copy `stream` into `dest`; returns (size, sha256). TooLarge once it exceeds the limit."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(_COPY_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge("file", f"is larger than the {max_bytes:,}-byte upload limit")
        digest.update(chunk)
        dest.write(chunk)
    dest.flush()
    return size, digest.hexdigest()


def check_manifest(lines: Iterable[bytes]) -> int:
    """Check that every non-blank line is JSON; returns the number of entries.

    What an entry must hold depends on the job kind, so it is checked when a job expands it.
    """
    try:
        count = sum(1 for _ in iter_jsonl(lines, where="manifest"))
    except InvalidInput as err:
        raise InvalidInput("file", str(err)) from None
    if count == 0:
        raise InvalidInput("file", "manifest has no entries (one JSON value per line)")
    return count


def find_by_sha256(
    database_url: str, owner: str, sha256: str, purpose: str | None = None
) -> list[File]:
    """The owner's files with these bytes, oldest first."""
    if not SHA256_RE.fullmatch(sha256):
        return []
    query = select(File).where(File.owner == owner, File.sha256 == sha256)
    if purpose is not None:
        query = query.where(File.purpose == purpose)
    with session_scope(database_url) as session:
        return list(session.scalars(query.order_by(File.created_at, File.id)))


def get_file(database_url: str, owner: str, file_id: str) -> File | None:
    """The owner's file with this id, or None (unknown, malformed, or someone else's)."""
    if not FILE_ID_RE.fullmatch(file_id):
        return None
    with session_scope(database_url) as session:
        return session.scalar(select(File).where(File.id == file_id, File.owner == owner))


def delete_file(database_url: str, storage: Storage, owner: str, file_id: str) -> int | None:
    """Delete one of the owner's uploads: its row, and its stored object unless another row
    holds the same bytes (uploads are content-addressed). Returns the objects removed (0 or
    1), None if there is no such file. Items that still name it fail when fetched."""
    row = get_file(database_url, owner, file_id)
    if row is None:
        return None
    with session_scope(database_url) as session:
        session.execute(delete(File).where(File.id == file_id, File.owner == owner))
        shared = session.scalar(select(File.id).where(File.storage_key == row.storage_key).limit(1))
    if shared is None:
        storage.delete(row.storage_key)
    log.info("file=%s deleted (%s)", file_id, "object kept: shared" if shared else "object too")
    return 0 if shared else 1


def save_upload(
    database_url: str,
    storage: Storage,
    *,
    owner: str,
    stream: BinaryIO,
    filename: str | None,
    purpose: str,
    max_bytes: int,
    settings: Settings | None = None,
) -> tuple[File, bool]:
    """Store an upload; returns (file, created). `created` is False for a duplicate (free).
    A new one must fit the owner's upload bytes per day (`quotas.check_upload`, with
    `settings` or the process's): QuotaExceeded, and nothing is stored, otherwise."""
    if purpose not in PURPOSES:
        raise InvalidInput("purpose", f"must be one of {', '.join(PURPOSES)}")
    name = safe_filename(filename)
    with tempfile.NamedTemporaryFile(prefix="janus-upload-", suffix=".part") as tmp:
        size, sha256 = _spool(stream, tmp, max_bytes)
        if size == 0:
            raise InvalidInput("file", "is empty")
        if purpose == "manifest":
            with open(tmp.name, "rb") as lines:
                check_manifest(lines)
        existing = find_by_sha256(database_url, owner, sha256, purpose)
        if existing:
            log.info("upload %s by %s is a duplicate of %s", name, owner, existing[0].id)
            return existing[0], False
        with session_scope(database_url) as session:
            quotas.check_upload(session, settings or get_settings(), owner, size)
        key = upload_key(owner, sha256, name)
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        storage.put_file(key, Path(tmp.name), content_type=content_type)
    row = File(
        id=new_id("file"),
        owner=owner,
        filename=name,
        purpose=purpose,
        storage_key=key,
        bytes=size,
        sha256=sha256,
        content_type=content_type,
        created_at=utcnow(),
    )
    with session_scope(database_url) as session:
        session.add(row)
    log.info("stored upload %s (%d bytes) at %s", row.id, size, key)
    return row, True


def load_files(database_url: str, owner: str, file_ids: Iterable[str]) -> dict[str, File]:
    """The owner's files among `file_ids`, by id (malformed or unknown ids are left out)."""
    wanted = sorted({fid for fid in file_ids if FILE_ID_RE.fullmatch(fid)})
    found: dict[str, File] = {}
    with session_scope(database_url) as session:
        for i in range(0, len(wanted), 500):
            query = select(File).where(File.owner == owner, File.id.in_(wanted[i : i + 500]))
            found.update((row.id, row) for row in session.scalars(query))
    return found


def resolve_file_ref(files: dict[str, File], file_id: str, field: str, purpose: str) -> str:
    """`storage:<key>` for an uploaded file id, checking it exists and has the right purpose."""
    row = files.get(file_id)
    if row is None:
        raise InvalidInput(field, f"unknown file id '{file_id}'")
    if row.purpose != purpose:
        raise InvalidInput(field, f"file '{file_id}' was uploaded as {row.purpose}, not {purpose}")
    return STORAGE_SCHEME + row.storage_key


def referenced_file_ids(entries: Any, field: str) -> list[str]:
    """The file ids that `entries` (inline items or a source) give in `field` (or as a
    bare string), so they can be loaded in one query."""
    if not isinstance(entries, list):
        return []
    refs = (e.get(field) if isinstance(e, dict) else e for e in entries)
    return [ref for ref in refs if isinstance(ref, str) and FILE_ID_RE.fullmatch(ref)]


def file_resolver(
    database_url: str, owner: str, file_ids: list[str], purpose: str
) -> Callable[[str, str], str]:
    """A `resolve_file(file_id, field)` for `janus_batch.inputs` over the owner's files."""
    files = load_files(database_url, owner, file_ids) if file_ids else {}
    return lambda file_id, field: resolve_file_ref(files, file_id, field, purpose)
