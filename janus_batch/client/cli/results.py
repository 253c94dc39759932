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

Files already in DIR are kept, so an interrupted download resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
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
from janus_batch.client.cli.download import Fetch, fetch_all, fetch_one, report
from janus_batch.client.cli.upload import is_image
from janus_batch.client.http import FINAL_STATUSES, ApiError, Client

IMAGES_DIR = "images"


def save_manifest(client: Client, job_id: str, dest: Path, errors: bool = False) -> list[dict]:
    """Stream results.jsonl (or errors.jsonl) to `dest` atomically; returns its lines."""
    tmp = dest.with_name(dest.name + ".part")
    lines: list[dict] = []
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for line in client.iter_results(job_id, errors=errors):
                fh.write(line + "\n")
                lines.append(json.loads(line))
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return lines


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)


def write_sidecar(image: Path, text: str) -> None:
    """`<image stem>.txt` next to `image`, holding `text`."""
    image.parent.mkdir(parents=True, exist_ok=True)
    image.with_suffix(".txt").write_text(text, encoding="utf-8")


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
        self.used: set[str] = set()

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
        stem = rel.with_suffix("").as_posix().lower()
        if stem in self.used:
            rel = rel.with_name(f"{rel.stem}_{line['idx']}{rel.suffix}")
            stem = rel.with_suffix("").as_posix().lower()
        self.used.add(stem)
        return rel


def input_fetch(line: dict, dest: Path, images_dir: Path | None) -> Fetch:
    """Where to get the input image of a caption result line."""
    custom = _safe_rel(line.get("custom_id"))
    if images_dir is not None and custom is not None and (images_dir / custom).is_file():
        return Fetch(dest, local=images_dir / custom)
    image = line["input"]["image"]
    if image.startswith(("http://", "https://")):
        return Fetch(dest, url=image)
    if image.startswith("s3://"):
        return Fetch(dest, s3_uri=image)
    return Fetch(dest, file_id=image)


def check_uploads_served(client: Client, tasks: list[Fetch]) -> Fetch | None:
    """Fetch the first missing uploaded image alone (returned once fetched): if the API
    cannot send uploads back (404), say to pass --images instead of failing per image."""
    first = next((t for t in tasks if t.file_id and not t.dest.is_file()), None)
    if first is None:
        return None
    try:
        fetch_one(client, None, first)
        return first
    except ApiError as exc:
        if exc.status != 404:
            raise
        raise UsageError(
            f"cannot download uploaded image {first.file_id} ({exc}): pass --images DIR, the "
            "folder you captioned, to copy the images from there"
        ) from None


def caption_outputs(
    client: Client,
    job: dict,
    lines: list[dict],
    out_dir: Path,
    *,
    sidecars: bool,
    images_dir: Path | None,
    workers: int,
) -> int:
    """captions.csv, and with sidecars the input images with their captions; returns how
    many files could not be had."""
    names = InputNames(job.get("source"))
    named = [(line, names.name(line)) for line in lines]
    rows = [
        [
            line.get("custom_id") or "",
            f"{IMAGES_DIR}/{name.as_posix()}",
            line["input"]["image"],
            line.get("caption") or "",
        ]
        for line, name in named
    ]
    write_csv(out_dir / "captions.csv", ["custom_id", "image", "source", "caption"], rows)
    err.print(f"captions.csv: {len(rows)} captions", soft_wrap=True)
    if not sidecars:
        return 0
    placed = [(line, out_dir / IMAGES_DIR / name) for line, name in named]
    tasks = [input_fetch(line, dest, images_dir) for line, dest in placed]
    probed = check_uploads_served(client, tasks)
    rest = [task for task in tasks if task is not probed]
    tally = fetch_all(client, rest, workers=workers, label="copying inputs")
    tally.fetched += probed is not None
    for line, dest in placed:
        if dest.is_file():
            write_sidecar(dest, line.get("caption") or "")
    report(tally, f"{IMAGES_DIR}/ input images + .txt captions")
    return len(tally.failed)


def generate_outputs(
    client: Client, job: dict, lines: list[dict], out_dir: Path, *, sidecars: bool, workers: int
) -> int:
    """Every image of the job (and with sidecars its prompt), and images.csv; returns how
    many images could not be downloaded."""
    rows, tasks = [], []
    prompts: dict[Path, str] = {}
    for line in lines:
        prompt = line["input"].get("prompt", "")
        for image in line.get("images") or []:
            name = PurePosixPath(image["key"]).name
            dest = out_dir / IMAGES_DIR / name
            # straight from storage by the presigned URL (S3), through the API otherwise
            tasks.append(Fetch(dest, job_key=(job["id"], image["key"]), url=image.get("url")))
            rows.append(
                [
                    line.get("custom_id") or "",
                    prompt,
                    image.get("seed"),
                    image.get("index"),
                    f"{IMAGES_DIR}/{name}",
                ]
            )
            prompts[dest] = prompt
    write_csv(out_dir / "images.csv", ["custom_id", "prompt", "seed", "index", "image"], rows)
    tally = fetch_all(client, tasks, workers=workers)
    for dest, prompt in prompts.items() if sidecars else ():
        if dest.is_file():
            write_sidecar(dest, prompt)
    report(tally, f"{IMAGES_DIR}/")
    return len(tally.failed)


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
        lines = save_manifest(client, job_id, out_dir / "results.jsonl")
        err.print(f"results.jsonl: {len(lines)} lines", soft_wrap=True)
        if errors:
            failed = save_manifest(client, job_id, out_dir / "errors.jsonl", errors=True)
            err.print(f"errors.jsonl: {len(failed)} lines", soft_wrap=True)
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
