"""The `janus-batch` command.

Job commands (caption, generate, watch, status, list, cancel, retry, delete, results,
webhook-secret) are clients of the HTTP API: --api-url / JANUS_BATCH_API_URL and --api-key /
JANUS_BATCH_API_KEY say which one.
Operator commands (db, keys, model, serve, demo) work on the local configuration directly: they
live in `janus_batch.ops` and need the server extra, so a client-only install lists them with a
note saying what to install instead of failing at start.
"""

from __future__ import annotations

import importlib
import logging
from typing import Annotated

import typer
from rich.markup import escape

from janus_batch.client.cli.common import CliGroup, err
from janus_batch.client.cli.jobs import (
    cancel,
    delete,
    list_jobs,
    retry,
    status,
    watch,
    webhook_secret,
)
from janus_batch.client.cli.results import results
from janus_batch.client.cli.submit import caption, generate

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
app.command("retry", rich_help_panel=JOBS)(retry)
app.command("delete", rich_help_panel=JOBS)(delete)
app.command("results", rich_help_panel=JOBS)(results)
app.command("webhook-secret", rich_help_panel=JOBS)(webhook_secret)

SERVER_EXTRA = "pip install 'janus-batch[server]'"
OPERATOR_COMMANDS = (
    # name, module of janus_batch.ops, attribute: a Typer group or a command function
    ("db", "admin", "db_app"),
    ("keys", "admin", "keys_app"),
    ("model", "model", "model_app"),
    ("serve", "serve", "serve"),
    ("demo", "demo", "demo"),
)


def _add_missing(group: typer.Typer, name: str, reason: str) -> None:
    """A stand-in for an operator command whose extra is not installed: it says which."""

    def explain(args: Annotated[list[str] | None, typer.Argument(hidden=True)] = None) -> None:
        err.print(
            f"[red]error:[/] `janus-batch {name}` needs the server extra ({reason}): "
            + escape(SERVER_EXTRA)
        )
        raise typer.Exit(4)

    group.command(
        name,
        help=f"(needs the server extra: {SERVER_EXTRA})",
        rich_help_panel=OPERATE,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )(explain)


def add_operator_commands(group: typer.Typer) -> None:
    """Add db, keys, model, serve and demo from `janus_batch.ops` when the server extra is
    there."""
    for name, module, attr in OPERATOR_COMMANDS:
        try:
            command = getattr(importlib.import_module(f"janus_batch.ops.{module}"), attr)
        except ModuleNotFoundError as exc:
            _add_missing(group, name, f"no module {exc.name}")
            continue
        if isinstance(command, typer.Typer):
            group.add_typer(command, name=name, rich_help_panel=OPERATE)
        else:
            group.command(name, rich_help_panel=OPERATE)(command)


add_operator_commands(app)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


if __name__ == "__main__":
    app()
