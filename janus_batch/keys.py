"""API keys: created once (the plaintext is shown only then), stored as a SHA-256 hash.

    row, plaintext = create_key(db_url, "ci")     # plaintext like "jb_Xy3..."; keep it safe
    verify_key(db_url, plaintext)                 # -> ApiKey, or None if unknown or revoked
    revoke_key(db_url, row.id)                    # or by its display prefix, e.g. "jb_Xy3abcd"
    update_key(db_url, row.id, {"jobs_per_minute": 10})   # quotas: None = the default, 0 = none
    update_key(db_url, row.id, webhook_url="https://hooks.example.com/ci")   # "" clears it

The key id (`key_...`) is the owner of every job and file created with the key. A key's
webhook URL is checked as a job's is (`webhooks.check_url`, the egress policy); a job
submitted with the key and no `webhook_url` of its own takes it at creation
(`default_webhook_url`): it is recorded on the job, so a later change of the key's URL
leaves existing jobs as they are.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Mapping

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from janus_batch.db import session_scope
from janus_batch.models import ApiKey, new_id, utcnow
from janus_batch.quotas import LIMITS
from janus_batch.settings import Settings, get_settings
from janus_batch.webhooks import check_url

log = logging.getLogger(__name__)

KEY_PREFIX = "jb_"
DISPLAY_CHARS = 10
"""Characters of the plaintext kept for display (`jb_` + 7), enough to tell keys apart."""


NAME_CHARS = 255
"""Longest key name (the column's size)."""


class AmbiguousKey(LookupError):
    """A display prefix matches more than one key; use the key id."""


class KeyNameError(ValueError):
    """A key name that is empty, not one printable line, too long, or an active key's."""


class KeyLimitError(ValueError):
    """A quota that is not a limit's name, or not a whole number of at least 0 (or None)."""


Limits = Mapping[str, int | None]
"""Quotas of a key by name (`janus_batch.quotas.LIMITS`): None takes the setting's default,
0 is unlimited."""


def check_limits(limits: Limits) -> dict[str, int | None]:
    """The limits as given, checked: KeyLimitError for an unknown name or a bad value."""
    for name, value in limits.items():
        if name not in LIMITS:
            raise KeyLimitError(f"no limit {name!r}; the limits are {', '.join(LIMITS)}")
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise KeyLimitError(f"{name} must be a whole number of at least 0, not {value!r}")
    return dict(limits)


def hash_key(plaintext: str) -> str:
    """The stored form of a key: hex SHA-256 of its plaintext."""
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


def check_webhook_url(url: str, settings: Settings | None = None) -> str | None:
    """A key's webhook URL as given, checked as a job's is (`webhooks.check_url`: the egress
    policy of `settings`, default the process's); empty (or blank) means none: None.
    InvalidInput naming `webhook_url` otherwise."""
    if not url.strip():
        return None
    return check_url(settings or get_settings(), url.strip())


def create_key(
    database_url: str,
    name: str,
    limits: Limits | None = None,
    *,
    webhook_url: str | None = None,
    settings: Settings | None = None,
) -> tuple[ApiKey, str]:
    """Create a key named `name` (surrounding spaces dropped) with these quotas (the rest take
    the settings' defaults) and `webhook_url` (`check_webhook_url`); returns the row and the
    plaintext (never stored). KeyNameError if the name is empty, too long, or an active key
    has it already (names tell keys apart; a revoked key's name may be used again);
    KeyLimitError for a bad limit, InvalidInput for a refused webhook URL."""
    quotas = check_limits(limits or {})
    hook = check_webhook_url(webhook_url, settings) if webhook_url is not None else None
    name = name.strip()
    if not name:
        raise KeyNameError("a key needs a name (who or what uses it, e.g. alice or ci)")
    if not name.isprintable():
        raise KeyNameError(f"a key name is one line of printable characters, not {name!r}")
    if len(name) > NAME_CHARS:
        raise KeyNameError(f"a key name has at most {NAME_CHARS} characters, not {len(name)}")
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id("key"),
        name=name,
        key_hash=hash_key(plaintext),
        prefix=plaintext[:DISPLAY_CHARS],
        created_at=utcnow(),
        webhook_url=hook,
        **quotas,
    )
    with session_scope(database_url) as session:
        taken = session.scalar(
            select(ApiKey.id).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)).limit(1)
        )
        if taken is not None:
            raise KeyNameError(
                f"an active key is already named {name!r} ({taken}): pick another name, or "
                "revoke that key first"
            )
        session.add(row)
    log.info("created API key %s (%s) named %r", row.id, row.prefix, name)
    return row, plaintext


def verify_key(database_url: str, plaintext: str) -> ApiKey | None:
    """The active key whose plaintext this is, or None (unknown or revoked)."""
    if not plaintext.startswith(KEY_PREFIX):
        return None
    with session_scope(database_url) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def list_keys(database_url: str, *, include_revoked: bool = True) -> list[ApiKey]:
    """Every key, oldest first (hashes included; never show them)."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    with session_scope(database_url) as session:
        return list(session.scalars(query))


def revoke_key(database_url: str, id_or_prefix: str) -> ApiKey | None:
    """Revoke the key with this id or display prefix; None if there is none.

    Revoking a revoked key is a no-op that returns it. Raises AmbiguousKey when a prefix
    matches several keys.
    """
    with session_scope(database_url) as session:
        row = _find(session, id_or_prefix)
        if row is None:
            return None
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            log.info("revoked API key %s (%s)", row.id, row.prefix)
    return row


def update_key(
    database_url: str,
    id_or_prefix: str,
    limits: Limits | None = None,
    *,
    webhook_url: str | None = None,
    settings: Settings | None = None,
) -> ApiKey | None:
    """Set the quotas named in `limits` of the key with this id or display prefix (None: back
    to the setting's default; others unchanged) and, unless None, its webhook URL (`""`
    clears it; the key's existing jobs keep theirs); returns it, or None if there is no such
    key. AmbiguousKey as for `revoke_key`; KeyLimitError for a bad limit, InvalidInput for a
    refused webhook URL."""
    quotas = check_limits(limits or {})
    hook = check_webhook_url(webhook_url, settings) if webhook_url is not None else None
    with session_scope(database_url) as session:
        row = _find(session, id_or_prefix)
        if row is None:
            return None
        for name, value in quotas.items():
            setattr(row, name, value)
        if webhook_url is not None:
            row.webhook_url = hook
    if quotas:
        log.info("API key %s quotas set: %s", row.id, quotas)
    if webhook_url is not None:
        log.info("API key %s webhook URL %s", row.id, f"set to {hook}" if hook else "cleared")
    return row


def default_webhook_url(session: Session, owner: str) -> str | None:
    """The webhook URL of the key `owner` (None for none, or an owner that is no key): what
    a job the key submits without a `webhook_url` of its own takes."""
    return session.scalar(select(ApiKey.webhook_url).where(ApiKey.id == owner))


def _find(session: Session, id_or_prefix: str) -> ApiKey | None:
    """The key with this id or display prefix; AmbiguousKey if a prefix matches several."""
    rows = list(
        session.scalars(
            select(ApiKey).where(or_(ApiKey.id == id_or_prefix, ApiKey.prefix == id_or_prefix))
        )
    )
    if len(rows) > 1:
        raise AmbiguousKey(f"{id_or_prefix!r} matches {len(rows)} keys; use the key id")
    return rows[0] if rows else None
