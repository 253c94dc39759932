"""`janus-batch demo`: the README's main job.

A caption job and a generate job go through the real path (HTTP API -> SQL -> Redis ->
Celery worker -> Janus engine -> storage) on the embedded defaults: SQLite and a local
results folder, the Redis at JANUS_BATCH_REDIS_URL or a bundled one where none answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from PIL import Image, ImageDraw
from rich.console import Console
from rich.panel import Panel

from janus_batch.client.cli.watch import watch_jobs
from janus_batch.client.http import Client
from janus_batch.ops.embedded_redis import redis_answers, start_embedded
from janus_batch.ops.model_source import locate_model
from janus_batch.ops.stack import local_stack
from janus_batch.settings import get_settings

console = Console()

PROMPTS = [
    "a red fox sitting in fresh snow, golden hour",
    "a lighthouse on a cliff in a storm, oil painting",
    "a bowl of ramen, top-down photo",
]


def _sample_images(folder: Path) -> list[Path]:
    """Four small pictures drawn here (no downloads)."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes = [("red", "ellipse"), ("blue", "rectangle"), ("green", "polygon"), ("orange", "line")]
    paths = []
    for i, (color, shape) in enumerate(shapes):
        img = Image.new("RGB", (256, 256), "white")
        draw = ImageDraw.Draw(img)
        if shape == "polygon":
            draw.polygon([(128, 30), (30, 220), (226, 220)], fill=color)
        elif shape == "line":
            for k in range(0, 256, 32):
                draw.line([(0, k), (255, 255 - k)], fill=color, width=6)
        else:
            getattr(draw, shape)([40, 40, 216, 216], fill=color)
        path = folder / f"sample_{i}_{color}_{shape}.png"
        img.save(path)
        paths.append(path)
    return paths


def _choose_model(data_dir: Path, model: str) -> str:
    ok, how = locate_model(model)
    if ok:
        console.print(f"model: {how}")
        return model
    tiny = data_dir / "tiny-janus"
    console.print(
        Panel(
            f"[bold]The real checkpoint cannot be had here[/]: {how}.\n"
            f"Running on a TINY RANDOM checkpoint instead ({tiny}): the pipeline is real, "
            "the captions and images are noise.\nTo use Janus-Pro-1B: "
            "`huggingface-cli download deepseek-community/Janus-Pro-1B --local-dir ./Janus-Pro-1B` "
            "and set JANUS_BATCH_MODEL=./Janus-Pro-1B.",
            title="WARNING: no Janus-Pro checkpoint",
            border_style="red",
        )
    )
    if not (tiny / "config.json").is_file():
        from janus import make_tiny_checkpoint

        make_tiny_checkpoint(tiny, image_size=384)
    return str(tiny)


def demo(
    timeout: float = typer.Option(1800, help="Give up after this many seconds."),
) -> None:
    """Run a caption job and a generate job end to end and print where the results are."""
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    env = {"JANUS_BATCH_DATA_DIR": str(data_dir)}
    handle = None
    redis_url = settings.redis_url
    if not redis_answers(redis_url):
        redis_url, handle = start_embedded(data_dir / "redis")
        console.print(
            f"[yellow]no Redis at {settings.redis_url}: started the bundled one at {redis_url}[/]"
        )
    env["JANUS_BATCH_REDIS_URL"] = redis_url
    env["JANUS_BATCH_MODEL"] = _choose_model(data_dir, settings.model)

    from janus_batch.migrate import upgrade

    os.environ.update(env)
    get_settings.cache_clear()
    settings = get_settings()
    upgrade(settings.resolved_database_url())
    console.print(f"database: {settings.resolved_database_url()}")
    console.print(f"results:  {settings.resolved_storage_url()}")
    try:
        with local_stack(env, data_dir / "logs") as stack, Client(stack.api_url) as client:
            console.print(
                f"API at {stack.api_url} (docs: {stack.api_url}/docs); logs in {data_dir / 'logs'}"
            )
            ids = []
            for path in _sample_images(data_dir / "demo-inputs"):
                ids.append(client.upload_file(path, "image")["id"])
            caption = client.create_job(
                {
                    "kind": "caption",
                    "params": {
                        "prompt": "Describe this image in one sentence.",
                        "max_new_tokens": 24,
                    },
                    "items": [
                        {"image": fid, "custom_id": f"sample-{i}"} for i, fid in enumerate(ids)
                    ],
                }
            )
            generate = client.create_job(
                {
                    "kind": "generate",
                    "params": {"n": 2, "cfg_weight": 5.0, "temperature": 1.0},
                    "items": [
                        {"prompt": p, "seed": 1000 + i, "custom_id": f"prompt-{i}"}
                        for i, p in enumerate(PROMPTS)
                    ],
                }
            )
            jobs = watch_jobs(client, [caption["id"], generate["id"]], console, timeout=timeout)
            _report(client, jobs, settings.resolved_storage_url())
    finally:
        if handle is not None:
            handle.shutdown()


def _report(client: Client, jobs: list[dict], storage_url: str) -> None:
    for job in jobs:
        counts = job["counts"]
        console.print(
            f"\n[bold]{job['kind']} job {job['id']}[/]: {job['status']}, "
            f"{counts['succeeded']} succeeded, {counts['failed']} failed"
        )
        console.print(f"  manifest: {job['output']['results']}", soft_wrap=True)
        for line in client.iter_results(job["id"]):
            row = json.loads(line)
            if job["kind"] == "caption":
                console.print(f"  {row['custom_id']}: {row['caption']!r}", soft_wrap=True)
            else:
                for image in row["images"]:
                    console.print(
                        f"  {row['custom_id']} seed {image['seed']}: {image['uri']}",
                        soft_wrap=True,
                    )
    console.print(f"\n[bold green]done[/]: results under {storage_url}")
