"""`janus-batch demo`: the README's main job, `janus-batch serve` for the length of two jobs.

A caption job and a generate job go through the real path (HTTP API -> SQL -> Redis ->
Celery worker -> Janus engine -> storage) on the embedded stack of `janus-batch serve`
(`janus_batch.ops.serve.embedded_stack`): SQLite and a local results folder, the Redis at
JANUS_BATCH_REDIS_URL or the bundled one; then the stack stops.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import typer
from PIL import Image, ImageDraw

from janus_batch.client.cli.common import INTERRUPTED, fail
from janus_batch.client.cli.watch import watch_jobs
from janus_batch.client.http import Client
from janus_batch.ops.serve import StackError, console, embedded_stack, stop_signals

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


def demo(
    timeout: float = typer.Option(1800, help="Give up after this many seconds."),
) -> None:
    """Run a caption job and a generate job end to end and print where the results are."""
    hurry = threading.Event()
    try:
        with stop_signals(hurry), embedded_stack(hurry=hurry) as running:
            stack, settings = running.stack, running.settings
            console.print(
                f"API at {stack.api_url} (docs: {stack.api_url}/docs, dashboard: "
                f"{stack.api_url}/ui); logs in {running.log_dir}",
                soft_wrap=True,
            )
            with Client(stack.api_url) as client:
                jobs = _submit(client, settings.data_dir / "demo-inputs")
                done = watch_jobs(client, jobs, console, timeout=timeout)
                _report(client, done, settings.resolved_storage_url())
            console.print("stopping the stack (`janus-batch serve` keeps it up)")
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted[/]: the stack is stopped; jobs left resume on the next "
            "`janus-batch serve` or demo"
        )
        raise typer.Exit(INTERRUPTED) from None
    except (StackError, RuntimeError) as exc:
        raise fail(str(exc), 1) from None


def _submit(client: Client, inputs: Path) -> list[str]:
    """Upload the sample pictures; submit the caption job and the generate job."""
    ids = [client.upload_file(path, "image")["id"] for path in _sample_images(inputs)]
    caption = client.create_job(
        {
            "kind": "caption",
            "params": {"prompt": "Describe this image in one sentence.", "max_new_tokens": 24},
            "items": [{"image": fid, "custom_id": f"sample-{i}"} for i, fid in enumerate(ids)],
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
    return [caption["id"], generate["id"]]


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
