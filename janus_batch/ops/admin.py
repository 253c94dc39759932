"""Operator commands: `janus-batch db upgrade`, `janus-batch keys create|list|revoke`."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from janus_batch.settings import get_settings

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


@keys_app.command("create")
def keys_create(name: str = typer.Argument(..., help="A label, e.g. the user's name.")) -> None:
    """Create a key; its secret is printed once and stored only as a hash."""
    from janus_batch.keys import create_key

    row, secret = create_key(get_settings().resolved_database_url(), name)
    console.print(f"created key [bold]{row.id}[/] ({name})")
    console.print("secret (shown once, store it now):")
    print(secret)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    from janus_batch.keys import list_keys

    table = Table("id", "name", "prefix", "created", "revoked")
    for key in list_keys(get_settings().resolved_database_url()):
        table.add_row(
            key.id,
            key.name,
            key.prefix,
            f"{key.created_at:%Y-%m-%d %H:%M}",
            f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id or prefix.")) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from janus_batch.keys import revoke_key

    if not revoke_key(get_settings().resolved_database_url(), key_id):
        console.print(f"[red]no active key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")
