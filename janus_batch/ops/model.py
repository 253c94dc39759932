"""`janus-batch model make-tiny DIR`: a tiny random Janus checkpoint for tests and offline runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
