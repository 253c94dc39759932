"""`janus-batch model make-tiny | convert | info`: model checkpoints for operators."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from janus_batch.client.cli.common import fail
from janus_batch.settings import get_settings

model_app = typer.Typer(help="Model checkpoints.", no_args_is_help=True)


@model_app.command("make-tiny")
def make_tiny(
    directory: Annotated[Path, typer.Argument(help="Where to write the checkpoint.")],
    image_size: Annotated[
        int, typer.Option(help="Image side: 384 gives the real 576-token shape.")
    ] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny randomly initialised Janus checkpoint (same architecture, small sizes)."""
    from janus import make_tiny_checkpoint

    path = make_tiny_checkpoint(directory, image_size=image_size, seed=seed)
    typer.echo(f"tiny Janus checkpoint ({image_size}x{image_size} images) written to {path}")


@model_app.command("convert")
def convert(
    src: Annotated[Path, typer.Argument(help="A checkpoint in the original deepseek-ai layout.")],
    dst: Annotated[Path, typer.Argument(help="Where to write it (absent or empty).")],
) -> None:
    """Convert an original deepseek-ai Janus / Janus-Pro checkpoint (model_type
    multi_modality, e.g. deepseek-ai/Janus-Pro-7B) to transformers' format: weights, config,
    tokenizer and processor. JanusFlow is refused (a different image generator)."""
    from janus import JanusError
    from janus.convert import convert_checkpoint

    try:
        path = convert_checkpoint(src, dst)
    except JanusError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"converted {src} to transformers' Janus format in {path}")


@model_app.command("info")
def info(
    path: Annotated[Path, typer.Argument(help="A checkpoint folder, in either layout.")],
    dtype: Annotated[
        str | None,
        typer.Option(help="Estimate for this dtype (float32, bfloat16...); default: as stored."),
    ] = None,
    rows: Annotated[
        list[int] | None,
        typer.Option(
            "--rows", help="BATCH_ROWS values (repeat); default 4 8 16 32 and the set one."
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(help="Caption length budgeted; default JANUS_BATCH_MAX_NEW_TOKENS."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (bytes).")] = False,
) -> None:
    """Parameters, dtype and estimated device memory per JANUS_BATCH_BATCH_ROWS of a
    checkpoint (weights + the KV cache of a caption and an image pass), from its config."""
    from janus import JanusError
    from janus.model_info import DEFAULT_ROWS, describe, report

    settings = get_settings()
    chosen = sorted(set(rows or (*DEFAULT_ROWS, settings.batch_rows)))
    new_tokens = max_new_tokens or settings.max_new_tokens
    try:
        described = describe(path, dtype=dtype)
    except JanusError as exc:
        raise fail(str(exc)) from None
    if not as_json:
        typer.echo(report(described, chosen, new_tokens))
        return
    summary = {
        **asdict(described),
        "weight_bytes": described.weight_bytes,
        "kv_bytes_per_position": described.kv_bytes_per_position,
        "caption_positions": sum(described.caption_positions(new_tokens)),
        "image_positions": sum(described.image_positions()),
        "memory": [asdict(described.memory(r, new_tokens)) for r in chosen],
    }
    typer.echo(json.dumps(summary, indent=2))
