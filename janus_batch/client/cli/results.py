"""`janus-batch results JOB --out DIR`: a job's manifests and files in a local folder.

    DIR/results.jsonl             every succeeded item (as the API serves it)
    DIR/errors.jsonl              failed and cancelled items (--errors)
    DIR/captions.csv              caption jobs: custom_id, image (its name under images/:
                                  the path under the captioned folder, renamed _<idx> on a
                                  clash), source (the file id or URL captioned), caption
    DIR/images.csv                generate jobs: custom_id, prompt, seed, index, image
    DIR/images/<name>             generate jobs: every image; caption jobs with --sidecars:
    DIR/images/<stem>.txt         a copy of each input image next to its caption (--sidecars;
                                  for generate jobs the prompt) - the folder layout LoRA /
                                  fine-tuning trainers read (kohya-ss, ai-toolkit).
    DIR/shards/<name>.tar         generate jobs writing WebDataset shards: every shard as
                                  stored (images.csv names an image `shards/<name>.tar#<member>`;
                                  --sidecars also unpacks the images into images/ with a .txt)

Files already in DIR are kept, so an interrupted download resumes where it stopped. Memory
stays flat at any size: the manifest is streamed to disk, then read back a line at a time,
the CSVs written and the downloads started as each line is read (`Downloads`), and the names
already given to copied inputs are kept in a temporary SQLite file, not in memory.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Self
from urllib.parse import urlparse

import typer

from janus_batch.client.cli.common import (
    DEFAULT_API_URL,
    ApiKey,
    ApiUrl,
    UsageError,
    err,
    fail,
    handle_errors,
    make_client,
)
from janus_batch.client.cli.download import Downloads, Fetch, fetch_one, report
from janus_batch.client.cli.upload import is_image
from janus_batch.client.http import FINAL_STATUSES, ApiError, Client

IMAGES_DIR = "images"


def save_manifest(client: Client, job_id: str, dest: Path, errors: bool = False) -> int:
    """Stream results.jsonl (or errors.jsonl) to `dest` atomically, a line at a time;
    returns its line count."""
    tmp = dest.with_name(dest.name + ".part")
    count = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for line in client.iter_results(job_id, errors=errors):
                fh.write(line + "\n")
                count += 1
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def read_lines(path: Path) -> Iterator[dict]:
    """The JSON lines of a saved manifest, one at a time."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


@contextmanager
def csv_writer(path: Path, header: list[str]) -> Iterator[Any]:
    """A CSV writer whose file replaces `path` only once the block ends without error."""
    tmp = path.with_name(path.name + ".part")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            yield writer
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(path: Path, header: list[str], rows: Iterable[list[Any]]) -> None:
    with csv_writer(path, header) as writer:
        writer.writerows(rows)


def write_sidecar(image: Path, text: str) -> None:
    """`<image stem>.txt` next to `image`, holding `text`."""
    image.parent.mkdir(parents=True, exist_ok=True)
    image.with_suffix(".txt").write_text(text, encoding="utf-8")


class StemSet:
    """A set of names kept in a private temporary SQLite file (deleted when closed): a
    million names cost disk, not memory."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")  # "": a private on-disk database, gone at close
        self._db.execute("CREATE TABLE stems (stem TEXT PRIMARY KEY) WITHOUT ROWID")

    def add(self, stem: str) -> bool:
        """Add `stem`; False if it was there already."""
        try:
            self._db.execute("INSERT INTO stems VALUES (?)", (stem,))
        except sqlite3.IntegrityError:
            return False
        return True

    def close(self) -> None:
        self._db.close()


def _safe_rel(name: str | None) -> PurePosixPath | None:
    """`name` as a relative path that stays inside a folder, or None."""
    if not name or "\\" in name:
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("", ".", "..") for part in path.parts):
        return None
    return path


class InputNames:
    """Names of copied input images under images/: the custom_id when it is a relative
    path (folder uploads), the key under the job's S3 prefix, else the file's base name;
    made unique by stem (each needs its own .txt)."""

    def __init__(self, source: dict | None) -> None:
        prefix = (source or {}).get("s3_prefix") or ""
        self.prefix = prefix if prefix.endswith("/") or not prefix else prefix + "/"
        self.used = StemSet()

    def close(self) -> None:
        self.used.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def name(self, line: dict) -> PurePosixPath:
        image = line["input"]["image"]
        ext = PurePosixPath(urlparse(image).path).suffix if "://" in image else ""
        rel = _safe_rel(line.get("custom_id"))
        if rel is not None and not is_image(Path(rel.name)):
            rel = rel.with_name(rel.name + (ext or ".png"))
        if rel is None and self.prefix and image.startswith(self.prefix):
            rel = _safe_rel(image[len(self.prefix) :])
        if rel is None:
            base = PurePosixPath(urlparse(image).path).name if "://" in image else ""
            rel = PurePosixPath(base if base and is_image(Path(base)) else f"{line['idx']:08d}.png")
        if not self.used.add(rel.with_suffix("").as_posix().lower()):
            rel = rel.with_name(f"{rel.stem}_{line['idx']}{rel.suffix}")
            self.used.add(rel.with_suffix("").as_posix().lower())
        return rel


def input_fetch(
    custom_id: str | None, image: str, dest: Path, images_dir: Path | None, caption: str
) -> Fetch:
    """Where to get the input image of a captioned item, and its caption written next to it
    once it is there."""

    def then(path: Path) -> None:
        write_sidecar(path, caption)

    custom = _safe_rel(custom_id)
    if images_dir is not None and custom is not None and (images_dir / custom).is_file():
        return Fetch(dest, local=images_dir / custom, then=then)
    if image.startswith(("http://", "https://")):
        return Fetch(dest, url=image, then=then)
    if image.startswith("s3://"):
        return Fetch(dest, s3_uri=image, then=then)
    return Fetch(dest, file_id=image, then=then)


def check_upload_served(client: Client, task: Fetch) -> None:
    """Fetch a missing uploaded image alone: if the API cannot send uploads back (404), say
    to pass --images instead of failing per image."""
    try:
        fetch_one(client, None, task)
        if task.then is not None:
            task.then(task.dest)
    except ApiError as exc:
        if exc.status != 404:
            raise
        raise UsageError(
            f"cannot download uploaded image {task.file_id} ({exc}): pass --images DIR, the "
            "folder you captioned, to copy the images from there"
        ) from None


def caption_outputs(
    client: Client,
    job: dict,
    lines: Iterable[dict],
    out_dir: Path,
    *,
    sidecars: bool,
    images_dir: Path | None,
    workers: int,
) -> int:
    """captions.csv, and with sidecars the input images with their captions (read back from
    captions.csv, a row at a time); returns how many files could not be had."""
    captions = out_dir / "captions.csv"
    count = 0
    with (
        InputNames(job.get("source")) as names,
        csv_writer(captions, ["custom_id", "image", "source", "caption"]) as writer,
    ):
        for line in lines:
            name = names.name(line)
            writer.writerow(
                [
                    line.get("custom_id") or "",
                    f"{IMAGES_DIR}/{name.as_posix()}",
                    line["input"]["image"],
                    line.get("caption") or "",
                ]
            )
            count += 1
    err.print(f"captions.csv: {count} captions", soft_wrap=True)
    if not sidecars:
        return 0
    probed = False
    with (
        captions.open(encoding="utf-8", newline="") as fh,
        Downloads(client, workers=workers, label="copying inputs") as downloads,
    ):
        for row in csv.DictReader(fh):
            dest = out_dir / row["image"]
            task = input_fetch(row["custom_id"], row["source"], dest, images_dir, row["caption"])
            if not probed and task.file_id and not dest.is_file():
                check_upload_served(client, task)  # the first upload alone: served at all?
                probed = True
                downloads.tally.fetched += 1
                continue
            downloads.add(task)
    report(downloads.tally, f"{IMAGES_DIR}/ input images + .txt captions")
    return downloads.tally.failures


def unpack_shard(shard: Path, images: Path) -> None:
    """Each image of a downloaded WebDataset shard into `images`, with its prompt (from its
    json member) in `<stem>.txt`: the layout LoRA trainers read."""
    images.mkdir(parents=True, exist_ok=True)
    with tarfile.open(shard) as tar:
        for member in tar:
            rel = _safe_rel(member.name)
            body = tar.extractfile(member) if member.isfile() else None
            if rel is None or body is None or len(rel.parts) != 1:
                continue
            data = body.read()
            if rel.suffix == ".json":
                prompt = json.loads(data).get("prompt", "")
                (images / rel.name).with_suffix(".txt").write_text(prompt, encoding="utf-8")
            elif is_image(Path(rel.name)) and not (images / rel.name).is_file():
                tmp = images / (rel.name + ".part")
                tmp.write_bytes(data)
                tmp.replace(images / rel.name)


def generate_outputs(
    client: Client, job: dict, lines: Iterable[dict], out_dir: Path, *, sidecars: bool, workers: int
) -> int:
    """Every image of the job (and with sidecars its prompt), or every shard of a job writing
    WebDataset shards (with sidecars unpacked into images/), and images.csv; returns how many
    files could not be downloaded."""
    shards_seen: set[str] = set()  # one key per shard: a thousandth of the images
    header = ["custom_id", "prompt", "seed", "index", "image"]
    with (
        csv_writer(out_dir / "images.csv", header) as writer,
        Downloads(client, workers=workers) as downloads,
    ):
        for line in lines:
            prompt = line["input"].get("prompt", "")
            for image in line.get("images") or []:
                name, task = _image_task(job["id"], image, out_dir, prompt, sidecars)
                if task is not None and task.dest.name not in shards_seen:
                    if image.get("member"):
                        shards_seen.add(task.dest.name)
                    downloads.add(task)
                writer.writerow(
                    [line.get("custom_id") or "", prompt, image.get("seed"),
                     image.get("index"), name]
                )  # fmt: skip
    report(downloads.tally, f"{SHARDS_DIR}/" if shards_seen else f"{IMAGES_DIR}/")
    return downloads.tally.failures


SHARDS_DIR = "shards"


def _image_task(
    job_id: str, image: dict, out_dir: Path, prompt: str, sidecars: bool
) -> tuple[str, Fetch | None]:
    """How images.csv names an image, and the download that brings it: the image itself,
    straight from storage by its presigned URL (S3) or through the API; or the shard
    holding it (`member`)."""
    key = str(image["key"])
    name = PurePosixPath(key).name
    url = image.get("url")
    if member := image.get("member"):

        def unpack(path: Path) -> None:
            unpack_shard(path, out_dir / IMAGES_DIR)

        dest = out_dir / SHARDS_DIR / name
        fetch = Fetch(dest, (job_id, key), url, then=unpack if sidecars else None)
        return f"{SHARDS_DIR}/{name}#{member}", fetch

    def sidecar(path: Path) -> None:
        write_sidecar(path, prompt)

    dest = out_dir / IMAGES_DIR / name
    return f"{IMAGES_DIR}/{name}", Fetch(
        dest, (job_id, key), url, then=sidecar if sidecars else None
    )


@handle_errors
def results(
    job_id: Annotated[str, typer.Argument(help="A job id (job_...).", show_default=False)],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Folder to write into (created; files already there are kept).",
            show_default=False,
        ),
    ],
    sidecars: Annotated[
        bool,
        typer.Option(
            help="Write <image stem>.txt next to each image: the caption (caption "
            "jobs: the input images are copied into images/) or the prompt "
            "(generate jobs). The layout LoRA trainers read."
        ),
    ] = False,
    errors: Annotated[bool, typer.Option(help="Also write errors.jsonl.")] = False,
    images_dir: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="With --sidecars: the local folder the images were "
            "captioned from; copies come from there (matched by custom_id).",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Parallel downloads.")] = 8,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Download a job's results into a folder; a second run fetches only what is missing.

    Writes results.jsonl (and errors.jsonl with --errors); for a generate job every image
    (images/) and images.csv; for a caption job captions.csv, and with --sidecars the input
    images with a <stem>.txt caption each.
    """
    with make_client(api_url, api_key) as client:
        job = client.get_job(job_id)
        if job["status"] not in FINAL_STATUSES:
            err.print(
                f"[yellow]{job_id} is {job['status']}[/]: writing the results so far; "
                "run again when it ends",
                soft_wrap=True,
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = out_dir / "results.jsonl"
        count = save_manifest(client, job_id, manifest)
        err.print(f"results.jsonl: {count} lines", soft_wrap=True)
        if errors:
            failed = save_manifest(client, job_id, out_dir / "errors.jsonl", errors=True)
            err.print(f"errors.jsonl: {failed} lines", soft_wrap=True)
        lines = read_lines(manifest)
        if job["kind"] == "generate":
            missing = generate_outputs(
                client, job, lines, out_dir, sidecars=sidecars, workers=concurrency
            )
        else:
            missing = caption_outputs(
                client,
                job,
                lines,
                out_dir,
                sidecars=sidecars,
                images_dir=images_dir,
                workers=concurrency,
            )
    if missing:
        raise fail(f"{missing} files could not be fetched; run the same command again to retry")
    err.print(f"[green]done[/]: {out_dir}", soft_wrap=True)
