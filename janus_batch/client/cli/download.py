"""Fetching many files concurrently and resumably, each written atomically (`.part`, then
renamed), so a file that exists is complete and a second run skips it. `Downloads` takes the
files one at a time as the caller reads them (a million-line manifest streams): at most a few
per thread wait, so memory stays flat whatever the count.

A `Fetch` names where a file goes and how to get it: a job output key (through
`GET /v1/jobs/{id}/files/{key}`), an absolute URL (presigned S3 or https), an uploaded file
id (`GET /v1/files/{id}/content`), an s3:// URI (boto3 with the usual AWS credentials and
JANUS_BATCH_S3_ENDPOINT_URL), or a local file to copy.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from janus_batch.client.cli.common import err
from janus_batch.client.http import ApiError, Client, one_line


@dataclass(frozen=True)
class Fetch:
    """One file to bring to `dest`: one of the sources is set, or a presigned `url` with the
    API's `job_key` to fall back on (the URL expired, or the storage is not reachable from
    here)."""

    dest: Path
    job_key: tuple[str, str] | None = None
    url: str | None = None
    file_id: str | None = None
    s3_uri: str | None = None
    local: Path | None = None
    then: Callable[[Path], None] | None = field(default=None, compare=False)
    """Run with `dest` once the file is there (fetched now or before): a sidecar, say."""

    @property
    def source(self) -> str:
        if self.job_key:
            return self.job_key[1]
        return str(self.url or self.file_id or self.s3_uri or self.local)


SHOWN_FAILURES = 5


@dataclass
class Tally:
    """What a batch of fetches did (the first few failures kept to show)."""

    fetched: int = 0
    present: int = 0
    failures: int = 0
    failed: list[tuple[Fetch, str]] = field(default_factory=list)

    def fail(self, task: Fetch, message: str) -> None:
        self.failures += 1
        if len(self.failed) < SHOWN_FAILURES:
            self.failed.append((task, message))


class S3Reader:
    """Lazily built boto3 client for a user's s3:// inputs: boto3's credential chain, the
    endpoint and region from JANUS_BATCH_S3_ENDPOINT_URL / JANUS_BATCH_S3_REGION (boto3 is
    needed for these only: `pip install boto3`, or the server extra)."""

    def __init__(self) -> None:
        self._client: Any = None
        self._lock = threading.Lock()

    def fetch(self, uri: str, dest: Path) -> None:
        try:
            from botocore.exceptions import BotoCoreError, ClientError

            from janus_batch.s3client import make_s3_client, parse_s3_uri
        except ImportError:
            raise ApiError(f"cannot read {uri}: downloading s3:// inputs needs boto3") from None
        with self._lock:
            if self._client is None:
                self._client = make_s3_client(
                    os.environ.get("JANUS_BATCH_S3_ENDPOINT_URL") or None,
                    os.environ.get("JANUS_BATCH_S3_REGION") or None,
                )
        bucket, key = parse_s3_uri(uri)
        tmp = dest.with_name(dest.name + ".part")
        try:
            self._client.download_file(bucket, key, str(tmp))
            tmp.replace(dest)
        except (BotoCoreError, ClientError, OSError) as exc:
            tmp.unlink(missing_ok=True)
            raise ApiError(f"cannot read {uri}: {one_line(str(exc), 200)}") from None


def copy_atomic(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)


def fetch_one(client: Client, s3: S3Reader | None, task: Fetch) -> bool:
    """Bring one file; False if it was already there."""
    if task.dest.is_file():
        return False
    task.dest.parent.mkdir(parents=True, exist_ok=True)
    if task.url:
        try:
            client.download_url(task.url, task.dest)
            return True
        except ApiError:
            if task.job_key is None:
                raise
    if task.job_key:
        client.download(task.job_key[0], task.job_key[1], task.dest)
    elif task.file_id:
        client.download_file(task.file_id, task.dest)
    elif task.s3_uri:
        (s3 or S3Reader()).fetch(task.s3_uri, task.dest)
    elif task.local:
        copy_atomic(task.local, task.dest)
    else:
        raise ApiError(f"no source for {task.dest.name}")
    return True


class Downloads:
    """Fetches run on `workers` threads as they are added, with a progress line on stderr;
    `add` blocks while `4 * workers` wait (memory flat at any count). A file that cannot be
    had is counted in `tally`, and so is one its `then` cannot use (it is deleted, so the
    next run fetches it again); an unreachable API stops everything (raised by the next
    `add` or by `close`)."""

    def __init__(self, client: Client, *, workers: int = 8, label: str = "downloading") -> None:
        self.client = client
        self.tally = Tally()
        self._s3 = S3Reader()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(4 * max(1, workers))
        self._fatal: BaseException | None = None
        columns = (TextColumn(label), BarColumn(), MofNCompleteColumn())
        self._progress = Progress(
            *columns, console=err, transient=True, disable=not err.is_terminal
        )
        self._bar = self._progress.add_task("", total=None)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fetch")

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)
        self._progress.stop()
        if exc_type is None and self._fatal is not None:
            raise self._fatal

    def add(self, task: Fetch) -> None:
        """Fetch `task` on the pool (waiting for room first)."""
        if self._fatal is not None:
            raise self._fatal
        self._slots.acquire()
        try:
            self._pool.submit(self._run, task)
        except BaseException:
            self._slots.release()
            raise

    def _run(self, task: Fetch) -> None:
        try:
            if self._fatal is not None:
                return
            fetched = fetch_one(self.client, self._s3, task)
            if task.then is not None:
                task.then(task.dest)
        except (ApiError, OSError) as exc:
            if isinstance(exc, ApiError) and exc.status is None and not task.s3_uri:
                self._fatal = exc  # connection refused or timeout: the API is gone
                return
            with self._lock:
                self.tally.fail(task, str(exc))
        except Exception as exc:  # `then` cannot use the file (a shard that does not unpack)
            task.dest.unlink(missing_ok=True)  # fetched again by the next run, not kept as done
            with self._lock:
                self.tally.fail(task, f"cannot use it: {type(exc).__name__}: {exc}")
        else:
            with self._lock:
                if fetched:
                    self.tally.fetched += 1
                else:
                    self.tally.present += 1
        finally:
            self._progress.advance(self._bar)
            self._slots.release()


def fetch_all(
    client: Client, tasks: Iterable[Fetch], *, workers: int = 8, label: str = "downloading"
) -> Tally:
    """Run `tasks` (taken one at a time) on `workers` threads: `Downloads`."""
    with Downloads(client, workers=workers, label=label) as downloads:
        for task in tasks:
            downloads.add(task)
    return downloads.tally


def report(tally: Tally, what: str) -> None:
    """`images: 4 downloaded, 2 already present, 1 failed` and the first failures."""
    line = f"{what}: {tally.fetched} downloaded, {tally.present} already present"
    if tally.failures:
        line += f", [red]{tally.failures} failed[/]"
    err.print(line, soft_wrap=True)
    for task, message in tally.failed:
        err.print(f"  [red]{escape(task.dest.name)}[/]: {escape(message)}", soft_wrap=True)
