"""Operator commands: `janus-batch db upgrade`, `janus-batch keys create|list|update|revoke`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from janus_batch.client.cli.common import err, fail
from janus_batch.settings import get_settings

if TYPE_CHECKING:
    from janus_batch.models import ApiKey

console = Console()
db_app = typer.Typer(help="The job database (SQLite or PostgreSQL).", no_args_is_help=True)
keys_app = typer.Typer(
    help="API keys (used when JANUS_BATCH_AUTH_MODE=keys).", no_args_is_help=True
)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the tables (Alembic) at JANUS_BATCH_DATABASE_URL."""
    from janus_batch.migrate import current_revision, upgrade

    url = get_settings().resolved_database_url()
    upgrade(url)
    console.print(f"database at revision [bold]{current_revision(url)}[/]: {_safe(url)}")


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


LIMIT_HELP = "a whole number; 0: unlimited; `default`: the JANUS_BATCH_ setting of that name"
MaxOutstanding = Annotated[
    str | None,
    typer.Option(
        "--max-outstanding-items",
        help=f"Most items pending or running in the key's unfinished jobs ({LIMIT_HELP}).",
    ),
]
JobsPerMinute = Annotated[
    str | None,
    typer.Option("--jobs-per-minute", help=f"Most jobs submitted in any 60 s ({LIMIT_HELP})."),
]
UploadPerDay = Annotated[
    str | None,
    typer.Option(
        "--upload-bytes-per-day", help=f"Most bytes uploaded in any 24 hours ({LIMIT_HELP})."
    ),
]


WebhookUrl = Annotated[
    str | None,
    typer.Option(
        "--webhook-url",
        help="Where the key's jobs are POSTed on each terminal status when they name no "
        "webhook_url (checked by the egress policy; '' clears it). A job keeps the URL it "
        "was submitted with.",
        show_default=False,
    ),
]


def _limits(**given: str | None) -> dict[str, int | None]:
    """The limit options given, as numbers (None for `default`); exits 2 on a bad one."""
    limits: dict[str, int | None] = {}
    for name, text in given.items():
        if text is None:
            continue
        if text.strip().lower() == "default":
            limits[name] = None
            continue
        try:
            value = int(text.replace("_", "").replace(",", ""))
        except ValueError:
            value = -1
        if value < 0:
            flag = "--" + name.replace("_", "-")
            raise fail(f"{flag} takes a whole number of at least 0 or `default`, not {text!r}", 2)
        limits[name] = value
    return limits


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="A label, e.g. the user's name."),
    max_outstanding_items: MaxOutstanding = None,
    jobs_per_minute: JobsPerMinute = None,
    upload_bytes_per_day: UploadPerDay = None,
    webhook_url: WebhookUrl = None,
) -> None:
    """Create a key, with its own quotas if given (else the settings' defaults) and a webhook
    URL for its jobs. Its secret alone goes to stdout (`KEY=$(janus-batch keys create ci)`),
    the rest to stderr; it is shown once and stored only as a hash."""
    from janus_batch.inputs import InvalidInput
    from janus_batch.keys import KeyNameError, create_key

    limits = _limits(
        max_outstanding_items=max_outstanding_items,
        jobs_per_minute=jobs_per_minute,
        upload_bytes_per_day=upload_bytes_per_day,
    )
    settings = get_settings()
    try:
        row, secret = create_key(
            settings.resolved_database_url(),
            name,
            limits,
            webhook_url=webhook_url,
            settings=settings,
        )
    except KeyNameError as exc:
        raise fail(str(exc), 1) from None
    except InvalidInput as exc:
        raise fail(f"--webhook-url: {exc.message}", 2) from None
    err.print(
        f"created key [bold]{row.id}[/] ({escape(row.name)}); its secret, shown once: store it now",
        soft_wrap=True,
    )
    err.print(f"quotas: {_quota_text(row)}", soft_wrap=True)
    if row.webhook_url:
        err.print(f"webhook: {escape(row.webhook_url)}", soft_wrap=True)
    print(secret)


@keys_app.command("update")
def keys_update(
    key_id: str = typer.Argument(
        ..., help="The key's full id (key_...) or its display prefix (jb_ and 7 characters)."
    ),
    max_outstanding_items: MaxOutstanding = None,
    jobs_per_minute: JobsPerMinute = None,
    upload_bytes_per_day: UploadPerDay = None,
    webhook_url: WebhookUrl = None,
) -> None:
    """Set a key's quotas (those given; `default` returns one to its setting) and its webhook
    URL (`--webhook-url ''` clears it). They apply to its next request; jobs already
    submitted keep the webhook URL they were created with."""
    from janus_batch.inputs import InvalidInput
    from janus_batch.keys import AmbiguousKey, update_key

    limits = _limits(
        max_outstanding_items=max_outstanding_items,
        jobs_per_minute=jobs_per_minute,
        upload_bytes_per_day=upload_bytes_per_day,
    )
    if not limits and webhook_url is None:
        raise fail(
            "nothing to update: give --max-outstanding-items, --jobs-per-minute, "
            "--upload-bytes-per-day or --webhook-url",
            2,
        )
    settings = get_settings()
    try:
        row = update_key(
            settings.resolved_database_url(),
            key_id,
            limits,
            webhook_url=webhook_url,
            settings=settings,
        )
    except AmbiguousKey as exc:
        raise fail(f"{exc}. {REVOKE_TAKES.replace('revoke', 'update', 1)}", 1) from None
    except InvalidInput as exc:
        raise fail(f"--webhook-url: {exc.message}", 2) from None
    if row is None:
        raise fail(f"no key {key_id!r}: {REVOKE_TAKES.replace('revoke', 'update', 1)}", 1)
    err.print(f"updated {row.id} ({escape(row.name)}): {_quota_text(row)}", soft_wrap=True)
    if webhook_url is not None:
        hook = escape(row.webhook_url) if row.webhook_url else "none"
        err.print(f"webhook: {hook} (the key's jobs already submitted keep theirs)", soft_wrap=True)


def _limit_text(key: ApiKey, name: str) -> str:
    """A key's limit as shown: a number, `unlimited`, or `default (...)` from the settings."""
    own = getattr(key, name)
    value = own if own is not None else getattr(get_settings(), name)
    shown = f"{value:,}" if value else "unlimited"
    return shown if own is not None else f"default ({shown})"


def _quota_text(key: ApiKey) -> str:
    from janus_batch.quotas import LIMITS

    return ", ".join(f"{name} {_limit_text(key, name)}" for name in LIMITS)


KEY_COLUMNS = (
    "id",
    "name",
    "prefix",
    "created",
    "revoked",
    "max_outstanding_items",
    "jobs_per_minute",
    "upload_bytes_per_day",
    "webhook_url",
)


def _key_rows(keys: list[ApiKey]) -> list[tuple[str, ...]]:
    return [
        (
            key.id,
            key.name,
            key.prefix,
            f"{key.created_at:%Y-%m-%d %H:%M}",
            f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "",
            _limit_text(key, "max_outstanding_items"),
            _limit_text(key, "jobs_per_minute"),
            _limit_text(key, "upload_bytes_per_day"),
            key.webhook_url or "",
        )
        for key in keys
    ]


def keys_table(keys: list[ApiKey]) -> Table:
    """The terminal view: ids and prefixes keep their full width on any terminal (never cut
    or wrapped); the other columns fold."""
    rows = _key_rows(keys)
    table = Table()
    for i, header in enumerate(KEY_COLUMNS):
        if header in ("id", "prefix"):
            width = max([len(header), *(len(row[i]) for row in rows)])
            table.add_column(header, no_wrap=True, min_width=width)
        else:
            table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(escape(value) for value in row))
    return table


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their secrets) with their quotas and webhook URLs: a table on a
    terminal, tab-separated lines with a header when piped (`janus-batch keys list | cut -f1`)."""
    from janus_batch.keys import list_keys

    keys = list_keys(get_settings().resolved_database_url())
    if console.is_terminal:
        console.print(keys_table(keys))
        return
    for row in [KEY_COLUMNS, *_key_rows(keys)]:
        print("\t".join(row))


REVOKE_TAKES = (
    "revoke takes a key's full id (key_...) or its display prefix (jb_ and 7 characters), "
    "as `janus-batch keys list` shows them"
)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(
        ..., help="The key's full id (key_...) or its display prefix (jb_ and 7 characters)."
    ),
) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from janus_batch.keys import AmbiguousKey, list_keys, revoke_key

    url = get_settings().resolved_database_url()
    before = list_keys(url)
    try:
        row = revoke_key(url, key_id)
    except AmbiguousKey as exc:
        raise fail(f"{exc}. {REVOKE_TAKES}", 1) from None
    if row is None:
        raise fail(f"no key {key_id!r}{_started(before, key_id)}: {REVOKE_TAKES}", 1)
    if any(k.id == row.id and k.revoked_at for k in before):
        err.print(f"{row.id} ({escape(row.name)}) was already revoked on {row.revoked_at:%Y-%m-%d}")
        return
    err.print(f"revoked {row.id} ({escape(row.name)}, {row.prefix})")


def _started(keys: list[ApiKey], start: str, shown: int = 3) -> str:
    """` ('key_3f' is only the start of key_3f..., ...)` when ids or prefixes start so."""
    ids = [k.id for k in keys if start and (k.id.startswith(start) or k.prefix.startswith(start))]
    if not ids:
        return ""
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return f" ({start!r} is only the start of {', '.join(ids[:shown])}{more})"
