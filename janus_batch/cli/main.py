"""The `janus-batch` command."""

from __future__ import annotations

import logging

import typer

from janus_batch.cli.admin import db_app, keys_app
from janus_batch.cli.demo import demo
from janus_batch.cli.model import model_app

app = typer.Typer(
    help="janus-batch: caption images and generate images with Janus-Pro, in batches, "
    "through a job queue.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(model_app, name="model")
app.command("demo")(demo)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


if __name__ == "__main__":
    app()
