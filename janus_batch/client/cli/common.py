"""What every API command shares: the --api-url/--api-key options, the client, the two
consoles, exit codes, and turning errors into one red line instead of a traceback.

Output convention: what a script captures (a job id, a table, JSON) goes to stdout; progress,
summaries and errors go to stderr.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from janus_batch.client.http import ApiError, Client

if TYPE_CHECKING:  # checked against the installed typer, which vendors its own click
    from typer._click.exceptions import UsageError as ClickUsageError
else:
    try:  # typer 0.2x vendors its own click
        from typer._click.exceptions import UsageError as ClickUsageError
    except ImportError:  # pragma: no cover - older typer on the real click
        from click.exceptions import UsageError as ClickUsageError

OK = 0
ITEMS_FAILED = 1
CANCELLED = 2
JOB_FAILED = 3
ERROR = 4
TIMED_OUT = 5
EXPIRED = 6
INTERRUPTED = 130
BROKEN_PIPE = 141
"""The reader of stdout went away (`janus-batch list --json | head -1`): 128 + SIGPIPE, as a
Unix tool killed by it, and no message."""

EXIT_CODES_HELP = (
    "Exit codes: 0 every item succeeded; 1 some items failed; 2 the job was cancelled; "
    "3 the job failed; 4 usage, connection or API error; 5 --timeout expired first; 6 the "
    "job expired (its completion window ended with items left)."
)

DEFAULT_API_URL = "http://127.0.0.1:8000"


class _Stdout(Console):
    """stdout's console: a closed pipe raises BrokenPipeError like print() does (rich would
    exit 1), so `handle_errors` ends every command the same way."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


out = _Stdout(highlight=False)
err = Console(stderr=True, highlight=False)

ApiUrl = Annotated[
    str,
    typer.Option("--api-url", envvar="JANUS_BATCH_API_URL", help="API address.", show_default=True),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="JANUS_BATCH_API_KEY",
        help="API key (when the API runs in keys mode).",
        show_default=False,
    ),
]


class UsageError(Exception):
    """The command line asks for something impossible (a missing file, a bad manifest line)."""


def fail(message: str, code: int = ERROR) -> typer.Exit:
    """Print `error: message` in red on stderr; returns the Exit to raise."""
    err.print(Text(f"error: {message}", style="red"), soft_wrap=True)
    return typer.Exit(code)


F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Run a command, turning ApiError / UsageError / OSError into one red line and exit 4,
    Ctrl-C into exit 130 (the job keeps running on the server), and a closed stdout into a
    quiet exit 141."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BrokenPipeError:
            raise quiet_broken_pipe() from None
        except (ApiError, UsageError) as exc:
            raise fail(str(exc)) from None
        except OSError as exc:
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            raise fail(f"{exc.strerror or exc}{where}") from None
        except KeyboardInterrupt:
            err.print("interrupted", style="yellow")
            raise typer.Exit(INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def quiet_broken_pipe() -> typer.Exit:
    """stdout's reader is gone: point stdout at /dev/null, so the interpreter's last flush
    does not fail again, and return the exit to raise."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file (captured in-process): nothing to redirect
        return typer.Exit(BROKEN_PIPE)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return typer.Exit(BROKEN_PIPE)


def with_exit_codes(func: F) -> F:
    """Append the exit codes to a command's help."""
    func.__doc__ = f"{inspect.cleandoc(func.__doc__ or '')}\n\n{EXIT_CODES_HELP}"
    return func


def make_client(api_url: str, api_key: str | None) -> Client:
    """A client of the API at `api_url`."""
    if not api_url.startswith(("http://", "https://")):
        raise UsageError(f"--api-url must start with http:// or https://, got {api_url!r}")
    return Client(api_url, api_key or None)


class CliGroup(TyperGroup):
    """The command group: a command line that cannot be parsed exits 4, not click's 2 (which
    means 'cancelled' here)."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except ClickUsageError as exc:
            exc.exit_code = ERROR
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ClickUsageError as exc:
            exc.exit_code = ERROR
            raise
