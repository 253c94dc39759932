"""The local-folder backend: keys are files under one root folder (the embedded default)."""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from janus_batch.storage.base import (
    KeyTooLongError,
    NotFoundError,
    Storage,
    StorageError,
    validate_key,
    validate_prefix,
)

logger = logging.getLogger(__name__)

TMP_PREFIX = ".janus-tmp-"
"""Names of in-progress writes start with this; listings skip them."""

_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


def _is_missing(exc: OSError) -> bool:
    """Whether an OSError means "no such object": missing, a folder, or a name too long to
    exist (ENAMETOOLONG, e.g. a long root plus a long key)."""
    return isinstance(exc, _MISSING) or exc.errno == errno.ENAMETOOLONG


def _stat_file(path: Path) -> os.stat_result | None:
    """The stat of the regular file at `path`, or None if there is none."""
    try:
        st = path.stat()
    except OSError as exc:
        if _is_missing(exc) or exc.errno in (errno.ELOOP, errno.EBADF):
            return None
        raise
    return st if stat.S_ISREG(st.st_mode) else None


def path_from_url(url: str) -> Path:
    """The absolute path named by a plain path or a `file://` URL."""
    if url.startswith("file:"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URL must name a local path, got {url!r}")
        return Path(url2pathname(unquote(parsed.path))).resolve()
    return Path(url).expanduser().resolve()


class LocalStorage(Storage):
    """Objects stored as files under `root`; writes are atomic (temp file + rename)."""

    def __init__(self, url: str | Path) -> None:
        self.root = path_from_url(str(url))
        self.url = str(self.root)

    def close(self) -> None:
        """Nothing to release: a folder holds no connections."""

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _write(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TMP_PREFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    fill(f)
                os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are read by other processes
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write {self.uri(key)}: {exc}") from exc
        logger.debug("wrote %s", target)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self._write(key, lambda f: f.write(data))

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        def copy(f: BinaryIO) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, 1024 * 1024)

        self._write(key, copy)

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def open_read(self, key: str, start: int = 0, length: int | None = None) -> BinaryIO:
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
        except OSError as exc:
            if _is_missing(exc):
                raise NotFoundError(f"{self.uri(key)} does not exist") from exc
            raise StorageError(f"cannot read {self.uri(key)}: {exc}") from exc
        f.seek(start)
        if length is None:
            return f
        with f:  # a window, as a ranged GET returns on S3 (length is the caller's bound)
            return io.BytesIO(f.read(length))

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        try:
            path = self._path(key)
        except KeyTooLongError:  # no object can have such a key
            return None
        st = _stat_file(path)
        return st.st_size if st is not None else None

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():  # a "folder" is not an object; like S3, nothing to delete
            return
        try:
            path.unlink(missing_ok=True)
        except NotADirectoryError:
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {self.uri(key)}: {exc}") from exc

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        return self._walk(self.root, "", validate_prefix(prefix))

    def _walk(self, folder: Path, rel: str, prefix: str) -> Iterator[str]:
        """Keys under `folder` in S3 order (a folder sorts as `name/`), pruned by `prefix`."""
        try:
            with os.scandir(folder) as it:
                entries = [e for e in it if not e.name.startswith(TMP_PREFIX)]
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise StorageError(f"cannot list {folder}: {exc}") from exc
        named = sorted(
            ((e.name + "/" if e.is_dir() else e.name, e) for e in entries), key=lambda p: p[0]
        )
        for name, entry in named:
            key = rel + name
            if name.endswith("/"):
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(Path(entry.path), key, prefix)
            elif entry.is_file() and key.startswith(prefix):
                yield key

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def presigned_url(self, key: str, expires: int = 3600) -> str | None:
        validate_key(key)
        return None

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"storage folder {self.root} is not usable: {exc}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"storage folder {self.root} is not writable")
