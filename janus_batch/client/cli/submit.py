"""`janus-batch caption` and `janus-batch generate`: build a job from local or remote inputs,
submit it, print its id (stdout, alone on its line) and, with --wait, follow it."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from janus_batch.client.cli.common import (
    DEFAULT_API_URL,
    ApiKey,
    ApiUrl,
    UsageError,
    err,
    handle_errors,
    make_client,
    with_exit_codes,
)
from janus_batch.client.cli.inputs import (
    LINE,
    caption_target,
    read_prompts,
    with_seeds,
    write_jsonl,
)
from janus_batch.client.cli.upload import (
    Uploaded,
    UploadFailure,
    find_images,
    unsendable,
    upload_folder,
)
from janus_batch.client.cli.watch import wait_for
from janus_batch.client.http import ApiError, Client
from janus_batch.formats import IMAGE_EXTENSIONS, ImageFormat

DEFAULT_INLINE_LIMIT = 10_000
"""The API's default JANUS_BATCH_MAX_INLINE_ITEMS; above it items go as a manifest."""

Wait = Annotated[
    bool, typer.Option("--wait", "-w", help="Follow the job with a progress bar until it ends.")
]
Interval = Annotated[float, typer.Option(min=0.1, help="Seconds between polls with --wait.")]
Timeout = Annotated[
    float | None,
    typer.Option(min=1, help="With --wait: stop waiting after this many seconds (exit 5)."),
]
IdempotencyKey = Annotated[
    str | None,
    typer.Option(help="Retry-safe submit: the same key returns the same job, not a new one."),
]
Label = Annotated[
    str | None,
    typer.Option(help="A short name for the job (shown by list, the dashboard and Flower)."),
]
Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="The model to run the job on, by the name the fleet serves it under (a 422 "
        "lists them; default: the deployment's default model).",
        show_default=False,
    ),
]
Meta = Annotated[
    list[str] | None,
    typer.Option(
        "--meta",
        help="KEY=VALUE kept with the job as metadata (repeat for more; at most 16).",
        show_default=False,
    ),
]
Resume = Annotated[
    str | None,
    typer.Option(
        help="Submit only the items without a result in this earlier job (matched by "
        "custom_id: an image's path under the folder, a prompt's line number); nothing is "
        "submitted when every item succeeded there.",
        show_default=False,
    ),
]
SkipInvalid = Annotated[
    bool,
    typer.Option(
        "--skip-invalid",
        help="Send the items as a manifest: an invalid line becomes a failed item of the job "
        "(listed in errors.jsonl with its line number) instead of refusing the whole file.",
    ),
]
WebhookUrl = Annotated[
    str | None,
    typer.Option(
        help="POSTed the job, signed, when it ends (`janus-batch webhook-secret` verifies it).",
        show_default=False,
    ),
]


CompletionWindow = Annotated[
    str | None,
    typer.Option(
        help="How long the job may take: 30m, 24h, 7d or seconds. Items not finished by then "
        "expire; the job ends expired with what it finished (default: the server's).",
        show_default=False,
    ),
]


def job_fields(
    label: str | None,
    meta: list[str] | None,
    webhook_url: str | None,
    model: str | None = None,
    completion_window: str | None = None,
) -> dict:
    """The model, label, metadata, webhook and completion window of a job body (only those
    given); UsageError for a --meta without `=`."""
    fields: dict[str, Any] = {}
    if model is not None:
        fields["model"] = model
    if label is not None:
        fields["label"] = label
    if meta:
        metadata = {}
        for pair in meta:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise UsageError(f"--meta takes KEY=VALUE, got {pair!r}")
            metadata[key] = value
        fields["metadata"] = metadata
    if webhook_url is not None:
        fields["webhook_url"] = webhook_url
    if completion_window is not None:
        fields["completion_window"] = completion_window
    return fields


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def succeeded_ids(client: Client, job_id: str) -> set[str]:
    """custom_ids of the job's succeeded items (read page by page)."""
    done: set[str] = set()
    after: str | None = None
    while True:
        page = client.items(job_id, status="succeeded", limit=1000, after=after)
        done.update(str(i["custom_id"]) for i in page["data"] if i.get("custom_id") is not None)
        after = page.get("next_cursor")
        if not page.get("has_more") or after is None:
            return done


def without_done(client: Client, job_id: str | None, items: list[dict[str, Any]]) -> list[dict]:
    """`items` minus those whose custom_id succeeded in `job_id` (all of them when None)."""
    if job_id is None:
        return items
    done = succeeded_ids(client, job_id)
    left = [item for item in items if str(item.get("custom_id")) not in done]
    err.print(
        f"--resume {job_id}: {len(items) - len(left)} of {len(items)} items already have a "
        f"result there; {_count(len(left), 'item')} to submit",
        soft_wrap=True,
    )
    return left


def line_error(exc: ApiError, lines: list[int], path: Path) -> UsageError | None:
    """An API refusal of `items[i]` said as the file's line (None if it names no item)."""
    match = re.fullmatch(r"items\[(\d+)\](.*)", exc.field or "")
    if match is None or int(match.group(1)) >= len(lines):
        return None
    lineno = lines[int(match.group(1))]
    message = str(exc).replace(f"items[{match.group(1)}]", "the item")
    return UsageError(
        f"{path} line {lineno}: {message} (--skip-invalid records such lines as failed items "
        "and submits the rest)"
    )


def _submit(client: Client, body: dict[str, Any], idempotency_key: str | None, what: str) -> dict:
    """Create the job, print its id on stdout and a summary on stderr."""
    job = client.create_job(body, idempotency_key)
    total = job["counts"]["total"]
    items = (
        _count(total, "item") if job.get("expanded") else "items read from the source by a worker"
    )
    err.print(
        f"submitted [bold]{job['kind']}[/] job [bold cyan]{job['id']}[/] ({what}): {items}, "
        f"status {job['status']}",
        soft_wrap=True,
    )
    print(job["id"], flush=True)
    return job


def _upload_images(
    client: Client, root: Path, paths: list[Path], workers: int
) -> tuple[list[Uploaded], list[UploadFailure]]:
    """Upload with a progress bar on stderr; print what was sent and what was known."""
    total_bytes = sum(p.stat().st_size for p in paths)
    err.print(f"{_count(len(paths), 'image')} ({_size(total_bytes)}) under {root}", soft_wrap=True)
    columns = (
        TextColumn("uploading"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[what]}"),
    )
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("", total=len(paths), what="")

        def advance(result: Uploaded | UploadFailure) -> None:
            progress.update(task, advance=1, what=result.rel)

        uploads, failures = upload_folder(client, root, paths, workers=workers, on_done=advance)
    sent = [u for u in uploads if u.sent]
    err.print(
        f"uploaded {len(sent)} new ({_size(sum(u.size for u in sent))}), "
        f"{len(uploads) - len(sent)} already on the server",
        soft_wrap=True,
    )
    return uploads, failures


def folder_items(
    client: Client, root: Path, paths: list[Path], workers: int
) -> tuple[list[dict[str, Any]], int]:
    """The caption items of image files under `root`, in the order of `paths`: an uploaded
    one by its file id, one the client drops (empty, unreadable, refused by the API) as a
    not-sent item `{custom_id, error}` that the job records as failed, so its counts and
    errors.jsonl name every input. Each drop is printed. Returns (items, images uploaded);
    UsageError when no image could be uploaded."""
    rels = {p: p.relative_to(root).as_posix() for p in paths}
    dropped = {rels[p]: why for p in paths if (why := unsendable(p)) is not None}
    sendable = [p for p in paths if rels[p] not in dropped]
    uploads, failures = _upload_images(client, root, sendable, workers) if sendable else ([], [])
    dropped.update({failure.rel: failure.message for failure in failures})
    for rel, why in sorted(dropped.items()):
        err.print(
            f"[yellow]not sent {escape(rel)}[/]: {escape(why)} (recorded as a failed item)",
            soft_wrap=True,
        )
    if not uploads:
        raise UsageError("no image could be uploaded")
    by_rel = {u.rel: u for u in uploads}
    items = [
        {"image": by_rel[rel].file_id, "custom_id": rel}
        if rel in by_rel
        else {"custom_id": rel, "error": dropped[rel]}
        for rel in rels.values()
    ]
    return items, len(uploads)


def _upload_manifest(client: Client, path: Path) -> str:
    row, created = client.upload(path, "manifest")
    state = "uploaded" if created else "already on the server"
    err.print(f"manifest {path.name} {state}: {row['id']}", soft_wrap=True)
    return row["id"]


def _submit_items(
    client: Client,
    body: dict[str, Any],
    items: list[dict[str, Any]],
    *,
    inline_limit: int,
    stem: str,
    idempotency_key: str | None,
    what: str,
    lines: tuple[Path, list[int]] | None = None,
    as_manifest: bool = False,
) -> dict:
    """Send up to `inline_limit` items inline; more (or when the API answers 413 for
    `items`, or `as_manifest`) go as an uploaded JSONL manifest that a worker expands (an
    invalid line then fails alone). An inline refusal of one item names its file line when
    `lines` maps items to (file, line numbers)."""
    if len(items) <= inline_limit and not as_manifest:
        try:
            return _submit(client, {**body, "items": items}, idempotency_key, what)
        except ApiError as exc:
            if lines is not None and (said := line_error(exc, lines[1], lines[0])):
                raise said from None
            if exc.status != 413 or exc.field != "items":
                raise
            err.print(f"{exc}: sending a manifest instead", soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="janus-batch-") as tmp:
        manifest = write_jsonl(items, Path(tmp) / f"{stem}.jsonl")
        source = {"manifest": _upload_manifest(client, manifest)}
    return _submit(client, {**body, "source": source}, idempotency_key, what)


InlineLimit = Annotated[
    int,
    typer.Option(min=1, help="Send up to this many items inline; more are uploaded as a manifest."),
]


@with_exit_codes
@handle_errors
def caption(
    target: Annotated[
        str,
        typer.Argument(
            help="A folder of images (recursive), one image, a local .jsonl manifest, "
            "s3://bucket/prefix/ or an s3:// or https:// .jsonl manifest.",
            show_default=False,
        ),
    ],
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            "-p",
            help="The question asked about every image "
            "(default: the API's, 'Describe this image.')",
            show_default=False,
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="Longest caption in tokens (default: the API's).")
    ] = None,
    wait: Wait = False,
    interval: Interval = 1.0,
    timeout: Timeout = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Parallel uploads.")] = 8,
    inline_limit: InlineLimit = DEFAULT_INLINE_LIMIT,
    idempotency_key: IdempotencyKey = None,
    model: Model = None,
    label: Label = None,
    meta: Meta = None,
    webhook_url: WebhookUrl = None,
    completion_window: CompletionWindow = None,
    resume: Resume = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Caption images: a local folder, an S3 prefix or a JSONL manifest, as one job.

    A local folder is uploaded concurrently, skipping files the API already holds (so an
    interrupted upload resumes and a second run sends nothing); each image's custom_id is
    its path relative to the folder. An image file that cannot be sent (empty, unreadable)
    is reported and recorded as a failed item of the job. Running it again submits a new
    job of every image; with --resume JOB only the images without a caption in JOB. Prints
    the job id on stdout.
    """
    where = caption_target(target)
    params = {
        k: v
        for k, v in {"prompt": prompt, "max_new_tokens": max_new_tokens}.items()
        if v is not None
    }
    body: dict[str, Any] = {
        "kind": "caption",
        "params": params,
        **job_fields(label, meta, webhook_url, model, completion_window),
    }
    with make_client(api_url, api_key) as client:
        if where.kind in ("folder", "image"):
            path = Path(where.value)
            root, paths = (
                (path, find_images(path)) if where.kind == "folder" else (path.parent, [path])
            )
            if not paths:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise UsageError(f"no images ({exts}) under {path}")
            if resume is not None:
                done = succeeded_ids(client, resume)
                rels = [p.relative_to(root).as_posix() for p in paths]
                paths = [p for p, rel in zip(paths, rels, strict=True) if rel not in done]
                err.print(
                    f"--resume {resume}: {len(rels) - len(paths)} of {len(rels)} images already "
                    f"captioned there; {_count(len(paths), 'image')} to submit",
                    soft_wrap=True,
                )
                if not paths:
                    err.print("nothing to submit", soft_wrap=True)
                    return
            items, uploaded = folder_items(client, root, paths, concurrency)
            not_sent = len(items) - uploaded
            job = _submit_items(
                client,
                body,
                items,
                inline_limit=inline_limit,
                stem=path.stem or "images",
                idempotency_key=idempotency_key,
                what=f"{_count(uploaded, 'image')} from {path}"
                + (f", {not_sent} not sent" if not_sent else ""),
            )
        else:
            if resume is not None:
                raise UsageError("--resume takes a folder or images (items with custom ids)")
            if where.kind == "manifest_file":
                body["source"] = {"manifest": _upload_manifest(client, Path(where.value))}
                what = f"manifest {where.value}"
            elif where.kind == "manifest_uri":
                body["source"] = {"manifest": where.value}
                what = f"manifest {where.value}"
            else:
                body["source"] = {"s3_prefix": where.value}
                what = f"every image under {where.value}"
            job = _submit(client, body, idempotency_key, what)
        if wait:
            raise typer.Exit(wait_for(client, job["id"], interval=interval, timeout=timeout))


@with_exit_codes
@handle_errors
def generate(
    prompts: Annotated[
        Path,
        typer.Argument(
            help="prompts.txt (one prompt per non-empty line, custom_id = line number) or "
            "prompts.jsonl (one item per line: prompt, n, seed, cfg_weight, temperature, "
            "custom_id).",
            show_default=False,
        ),
    ],
    n: Annotated[int | None, typer.Option("--n", "-n", min=1, help="Images per prompt.")] = None,
    cfg: Annotated[
        float | None, typer.Option("--cfg", help="Classifier-free guidance weight (1-50).")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (0-2).")] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Item i gets seed SEED+i (recorded in the results, so a "
            "run can be reproduced) unless it has its own.",
        ),
    ] = None,
    image_format: Annotated[
        ImageFormat | None, typer.Option("--format", help="Output image format (default: png).")
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            "--shards",
            metavar="IMAGES",
            help="Write the images as WebDataset .tar shards of this many images each "
            "(image + json per image) instead of one object per image.",
        ),
    ] = None,
    inline_limit: InlineLimit = DEFAULT_INLINE_LIMIT,
    wait: Wait = False,
    interval: Interval = 1.0,
    timeout: Timeout = None,
    idempotency_key: IdempotencyKey = None,
    model: Model = None,
    label: Label = None,
    meta: Meta = None,
    webhook_url: WebhookUrl = None,
    completion_window: CompletionWindow = None,
    resume: Resume = None,
    skip_invalid: SkipInvalid = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Generate images from a prompt file, as one job.

    With --seed, item i gets seed SEED+i: the same file and options give the same images.
    Up to --inline-limit items are sent inline, more as an uploaded manifest. Prints the job
    id on stdout. An invalid line refuses the file, naming its line; with --skip-invalid it
    becomes a failed item of the job instead. --resume JOB submits only the lines without
    images in JOB.
    """
    items = with_seeds(read_prompts(prompts), seed)
    given = {
        "n": n,
        "cfg_weight": cfg,
        "temperature": temperature,
        "format": image_format.value if image_format else None,
        "output": None if shards is None else {"format": "webdataset", "images_per_shard": shards},
    }
    body: dict[str, Any] = {
        "kind": "generate",
        "params": {k: v for k, v in given.items() if v is not None},
        **job_fields(label, meta, webhook_url, model, completion_window),
    }
    with make_client(api_url, api_key) as client:
        items = without_done(client, resume, items)
        if not items:
            err.print("nothing to submit", soft_wrap=True)
            return
        lines = [int(item.pop(LINE)) for item in items]
        job = _submit_items(
            client,
            body,
            items,
            inline_limit=inline_limit,
            stem=prompts.stem,
            idempotency_key=idempotency_key,
            what=f"{_count(len(items), 'prompt')} from {prompts.name}",
            lines=(prompts, lines),
            as_manifest=skip_invalid,
        )
        if wait:
            raise typer.Exit(wait_for(client, job["id"], interval=interval, timeout=timeout))
