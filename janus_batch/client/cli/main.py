"""The `janus-batch` command.

Job commands (caption, generate, watch, status, list, cancel, results) are clients of the
HTTP API: --api-url / JANUS_BATCH_API_URL and --api-key / JANUS_BATCH_API_KEY say which one.
Operator commands (db, keys, model, demo) work on the local configuration directly.
"""

from __future__ import annotations

import logging

import typer

from janus_batch.cli.admin import db_app, keys_app
from janus_batch.cli.common import CliGroup
from janus_batch.cli.demo import demo
from janus_batch.cli.jobs import cancel, list_jobs, status, watch
from janus_batch.cli.model import model_app
from janus_batch.cli.results import results
from janus_batch.cli.submit import caption, generate

app = typer.Typer(
    cls=CliGroup,
    help="janus-batch: caption images and generate images with Janus-Pro, in batches, "
    "through a job queue.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
JOBS = "Jobs"
OPERATE = "Operate"
app.command("caption", rich_help_panel=JOBS)(caption)
app.command("generate", rich_help_panel=JOBS)(generate)
app.command("watch", rich_help_panel=JOBS)(watch)
app.command("status", rich_help_panel=JOBS)(status)
app.command("list", rich_help_panel=JOBS)(list_jobs)
app.command("cancel", rich_help_panel=JOBS)(cancel)
app.command("results", rich_help_panel=JOBS)(results)
app.add_typer(db_app, name="db", rich_help_panel=OPERATE)
app.add_typer(keys_app, name="keys", rich_help_panel=OPERATE)
app.add_typer(model_app, name="model", rich_help_panel=OPERATE)
app.command("demo", rich_help_panel=OPERATE)(demo)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


if __name__ == "__main__":
    app()
