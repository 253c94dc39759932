"""Writing a generate chunk's images into one WebDataset shard (`params.output`).

Each item's images are encoded in the outtake pool as usual, then appended to the chunk's
shard, a `.tar` spooled on local disk (`<key>.<ext>` + `<key>.json` per image, `<key>` =
`<idx:08d>_<k>`): memory holds one item's images at a time, whatever the shard's size. The
item's outcome is held, not recorded; once every item of the chunk is done the shard is
uploaded in one PUT (`worker.generate.ShardSink.commit`) and only then are the held outcomes
recorded, so a result
never points to a shard that is not stored. A worker that dies before that records nothing:
the items' leases lapse and they run again, into a new shard (`janus_batch.shards.shard_key`
names it by its first item's attempt). Shards no result points to (a chunk that died after
its upload, or whose items were taken back) are deleted at finalize (`delete_orphans`).

Result entry of an image in a shard: `{"key": <shard key>, "member": "<key>.<ext>",
"range": [offset, size], "uri", "seed", "index"}`: `range` is where the member's bytes lie
in the shard, for a ranged GET.

A failed write (a full spool disk) leaves the archive with a partial member: the writer is
then broken (`ShardWriter.broken`), takes nothing more, and the chunk uploads nothing; its
items are deferred and go again into a new shard.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from janus_batch.lifecycle import Claimed
from janus_batch.models import Job
from janus_batch.shards import SHARDS_DIR, sample_key, shard_key
from janus_batch.storage import Storage

log = logging.getLogger(__name__)


class ShardBroken(OSError):
    """The shard's spool file could not be written: nothing more goes into it."""


class ShardWriter:
    """The shard of one chunk, spooled to a temporary file until it is uploaded."""

    def __init__(self, job: Job, first: Claimed) -> None:
        self.job_id = job.id
        self.key = shard_key(job.output_prefix, first.idx, first.attempts)
        self._dir = tempfile.TemporaryDirectory(prefix="janus-shard-")
        self.path = Path(self._dir.name) / "shard.tar"
        self._tar = tarfile.open(self.path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._closed = False
        self._lock = threading.Lock()
        self.members = 0
        self.broken: str | None = None
        """Why the spool file is no longer a valid archive (its first write error), or None."""

    def add_image(
        self, idx: int, k: int, ext: str, data: bytes, meta: dict[str, Any]
    ) -> tuple[str, list[int]]:
        """Append image `k` of item `idx` and its json; returns the image member's name and
        its [offset, size] in the shard."""
        key = sample_key(idx, k)
        sidecar = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()
        with self._lock:
            if self.broken is not None:
                raise ShardBroken(f"shard {self.key} is broken: {self.broken}")
            try:
                where = self._append(f"{key}.{ext}", data)
                self._append(f"{key}.json", sidecar)
            except Exception as exc:  # a partial member: appending more would corrupt it
                self.broken = f"{type(exc).__name__}: {exc}"
                log.warning("job=%s shard %s broken: %s", self.job_id, self.key, self.broken)
                raise ShardBroken(f"shard {self.key} is broken: {self.broken}") from exc
        return f"{key}.{ext}", where

    def _append(self, name: str, data: bytes) -> list[int]:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = int(time.time())
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))
        self.members += 1
        padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        return [self._tar.offset - padded, len(data)]

    def close(self) -> None:
        """Write the archive's end: the file at `path` is then the whole shard."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.broken is not None:  # no end blocks after garbage: just let the file go
                with contextlib.suppress(OSError):
                    self._tar.fileobj.close()  # type: ignore[union-attr]
                return
            try:
                self._tar.close()
            except OSError as exc:  # the archive's end could not be written
                self.broken = f"{type(exc).__name__}: {exc}"
                log.warning("job=%s shard %s broken: %s", self.job_id, self.key, self.broken)

    def discard(self) -> None:
        """Remove the local file (once uploaded, or when the chunk is abandoned)."""
        self.close()
        self._dir.cleanup()


def referenced_shards(result: dict[str, Any] | None) -> set[str]:
    """The shard keys an item's result points to."""
    images = (result or {}).get("images") or []
    return {
        entry["key"]
        for entry in images
        if isinstance(entry, dict) and entry.get("member") and isinstance(entry.get("key"), str)
    }


def list_shards(storage: Storage, job: Job) -> set[str]:
    """The job's shard keys now (one per shard: a thousandth of the images). Finalize lists
    them before it reads the items, so a shard uploaded later (a retried item's, while a
    stale finalize still runs) is never among those it may delete."""
    prefix = f"{job.output_prefix.rstrip('/')}/{SHARDS_DIR}/"
    return {key for key in storage.iter_keys(prefix) if key.endswith(".tar")}


def delete_orphans(storage: Storage, job: Job, listed: set[str], referenced: set[str]) -> int:
    """Delete the job's shards of `listed` (`list_shards`, taken before the items were read)
    that no result points to; returns how many."""
    removed = 0
    for key in sorted(listed):
        if key not in referenced:
            storage.delete(key)
            removed += 1
    if removed:
        log.info("job=%s deleted %d shards no result points to", job.id, removed)
    return removed
