"""Fetching many files concurrently and resumably, each written atomically (`.part`, then
renamed), so a file that exists is complete and a second run skips it.

A `Fetch` names where a file goes and how to get it: a job output key (through
`GET /v1/jobs/{id}/files/{key}`), an absolute URL (presigned S3 or https), an uploaded file
id (`GET /v1/files/{id}/content`), an s3:// URI (boto3 with the usual AWS credentials and
JANUS_BATCH_S3_ENDPOINT_URL), or a local file to copy.
"""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    @property
    def source(self) -> str:
        if self.job_key:
            return self.job_key[1]
        return str(self.url or self.file_id or self.s3_uri or self.local)


@dataclass
class Tally:
    """What a batch of fetches did."""

    fetched: int = 0
    present: int = 0
    failed: list[tuple[Fetch, str]] = field(default_factory=list)


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


def fetch_all(
    client: Client, tasks: list[Fetch], *, workers: int = 8, label: str = "downloading"
) -> Tally:
    """Run `tasks` on `workers` threads with a progress bar on stderr. A file that cannot be
    had is recorded in the tally; an unreachable API stops everything."""
    tally = Tally()
    s3 = S3Reader()
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn())
    with (
        Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress,
        ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fetch") as pool,
    ):
        bar = progress.add_task("", total=len(tasks))
        futures = {pool.submit(fetch_one, client, s3, task): task for task in tasks}
        try:
            for future in as_completed(futures):
                progress.advance(bar)
                try:
                    if future.result():
                        tally.fetched += 1
                    else:
                        tally.present += 1
                except (ApiError, OSError) as exc:
                    if (
                        isinstance(exc, ApiError)
                        and exc.status is None
                        and not futures[future].s3_uri
                    ):
                        raise  # connection refused or timeout: the API is gone
                    tally.failed.append((futures[future], str(exc)))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return tally


def report(tally: Tally, what: str) -> None:
    """`images: 4 downloaded, 2 already present, 1 failed` and the first failures."""
    line = f"{what}: {tally.fetched} downloaded, {tally.present} already present"
    if tally.failed:
        line += f", [red]{len(tally.failed)} failed[/]"
    err.print(line, soft_wrap=True)
    for task, message in tally.failed[:5]:
        err.print(f"  [red]{escape(task.dest.name)}[/]: {escape(message)}", soft_wrap=True)
