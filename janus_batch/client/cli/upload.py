"""Uploading a local folder of images, concurrently and resumably.

Each file is hashed (SHA-256) and looked up with `GET /v1/files?sha256=`; only files the API
does not hold yet are sent (and the API deduplicates an upload of known bytes anyway). So an
interrupted upload is resumed by running the same command again, and a second caption run on
the same folder sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from janus_batch.client.http import ApiError, Client, sha256_file
from janus_batch.formats import IMAGE_EXTENSIONS


def is_image(path: Path) -> bool:
    """Whether `path` names an image by its extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(folder: Path) -> list[Path]:
    """Every file under `folder` named as an image (recursive, hidden files and folders
    skipped), sorted: the user's inputs, a broken link among them (`unsendable` says why it
    cannot be sent). Other files (`notes.txt`, `.DS_Store`) are not inputs."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if (path.is_file() or _broken_link(path)) and is_image(path):
            found.append(path)
    return sorted(found)


def _broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def unsendable(path: Path) -> str | None:
    """Why the image file at `path` cannot be uploaded (`empty file (0 bytes)`, `cannot read
    (Permission denied)`, `broken symbolic link`), or None when it can: the error the job
    records for an input the client drops."""
    if _broken_link(path):
        return "broken symbolic link"
    try:
        size = path.stat().st_size
        with path.open("rb"):
            pass
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    return "empty file (0 bytes)" if size == 0 else None


@dataclass(frozen=True)
class Uploaded:
    """One local file and the id of its copy on the API."""

    path: Path
    rel: str
    file_id: str
    size: int
    sent: bool
    """True if this run sent the bytes; False if the API already had them."""


@dataclass(frozen=True)
class UploadFailure:
    """A file that was not uploaded: the API refused it (too large...) or it could not be read."""

    rel: str
    message: str


def upload_one(client: Client, path: Path, rel: str) -> Uploaded:
    """Upload `path` unless the API already holds its bytes."""
    size = path.stat().st_size
    existing = client.find_file(sha256_file(path), purpose="image")
    if existing is not None:
        return Uploaded(path, rel, existing["id"], size, sent=False)
    row, created = client.upload(path, "image")
    return Uploaded(path, rel, row["id"], size, sent=created)


def upload_folder(
    client: Client,
    root: Path,
    paths: list[Path],
    *,
    workers: int = 8,
    on_done: Callable[[Uploaded | UploadFailure], None] | None = None,
) -> tuple[list[Uploaded], list[UploadFailure]]:
    """Upload `paths` (files under `root`) with `workers` threads; returns the uploads in
    the order of `paths`, and the files not uploaded (refused by the API, unreadable). A
    connection error stops it all."""
    done: dict[Path, Uploaded] = {}
    failures: list[UploadFailure] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="upload") as pool:
        futures = {
            pool.submit(upload_one, client, path, path.relative_to(root).as_posix()): path
            for path in paths
        }
        try:
            for future in as_completed(futures):
                path = futures[future]
                try:
                    result: Uploaded | UploadFailure = future.result()
                except ApiError as exc:
                    if exc.status is None or exc.status in (401, 403) or exc.status >= 500:
                        raise  # the API is unreachable or refuses us: nothing else will work
                    result = UploadFailure(path.relative_to(root).as_posix(), str(exc))
                except OSError as exc:  # gone or unreadable since it was looked at
                    message = f"cannot read ({exc.strerror or exc})"
                    result = UploadFailure(path.relative_to(root).as_posix(), message)
                if isinstance(result, Uploaded):
                    done[path] = result
                else:
                    failures.append(result)
                if on_done is not None:
                    on_done(result)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [done[p] for p in paths if p in done], sorted(failures, key=lambda f: f.rel)
