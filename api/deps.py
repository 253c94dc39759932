"""FastAPI dependencies, as `Annotated` aliases routes declare in their signatures.

Settings are read per request through the cached `get_settings()`, never at import, so a
test (or a reload) that changes the environment and clears the cache gets a fresh view.
"""

from __future__ import annotations

import threading
from typing import Annotated

from celery import Celery
from fastapi import Cookie, Depends, Header, Request

from api.errors import HttpError
from janus_batch.constants import LOCAL_OWNER
from janus_batch.keys import verify_key
from janus_batch.queue import get_celery
from janus_batch.settings import Settings, get_settings
from janus_batch.storage import Storage, StorageError, storage_from_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]

KEY_COOKIE = "jb_key"
"""The HttpOnly cookie the dashboard sets from `/ui?key=...`; accepted in place of a header."""
UI_HEADER = "X-Janus-UI"
"""A header the dashboard's scripts send; required with cookie auth on anything but GET/HEAD,
so another site cannot make a browser post a form with the cookie (with SameSite=Lax, which
already keeps the cookie off cross-site subrequests)."""

_storages: dict[tuple[str, str | None, str | None], Storage] = {}
_storages_lock = threading.Lock()


def get_database_url(settings: SettingsDep) -> str:
    """The job table's URL."""
    return settings.resolved_database_url()


def get_storage(settings: SettingsDep) -> Storage:
    """The configured storage, opened once per location and shared by requests."""
    where = (settings.resolved_storage_url(), settings.s3_endpoint_url, settings.s3_region)
    with _storages_lock:
        storage = _storages.get(where)
        if storage is None:
            try:
                storage = storage_from_settings(settings)
            except ValueError as exc:  # a malformed JANUS_BATCH_STORAGE_URL
                raise StorageError(str(exc)) from exc
            _storages[where] = storage
        return storage


def get_app_celery() -> Celery:
    """The Celery app used to send messages (built once from the settings)."""
    return get_celery()


DatabaseUrl = Annotated[str, Depends(get_database_url)]
StorageDep = Annotated[Storage, Depends(get_storage)]
CeleryDep = Annotated[Celery, Depends(get_app_celery)]


def cookie_owner(database_url: str, key: str | None) -> str | None:
    """The owner of the dashboard cookie's key, or None if absent, unknown or revoked."""
    if not key:
        return None
    row = verify_key(database_url, key)
    return row.id if row is not None else None


def get_owner(
    settings: SettingsDep,
    database_url: DatabaseUrl,
    request: Request,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
    key_cookie: Annotated[
        str | None, Cookie(alias=KEY_COOKIE, description="The dashboard's key cookie.")
    ] = None,
) -> str:
    """Who is asking: the API key's id in `keys` mode, the single local owner in `open` mode.

    The key comes from the Authorization header, or else from the dashboard's cookie (for a
    request other than GET/HEAD only with the dashboard's `X-Janus-UI` header)."""
    if settings.auth_mode == "open":
        return LOCAL_OWNER
    challenge = {"WWW-Authenticate": "Bearer"}
    if not authorization and key_cookie:
        if request.method not in ("GET", "HEAD") and not request.headers.get(UI_HEADER):
            raise HttpError(403, f"cookie authentication needs the {UI_HEADER} header", UI_HEADER)
        owner = cookie_owner(database_url, key_cookie)
        if owner is None:
            raise HttpError(401, "invalid or revoked API key (cookie)", KEY_COOKIE, challenge)
        return owner
    if not authorization:
        raise HttpError(
            401,
            "an API key is required: send 'Authorization: Bearer <key>'",
            "Authorization",
            challenge,
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HttpError(
            401, "malformed Authorization header: use 'Bearer <key>'", "Authorization", challenge
        )
    key = verify_key(database_url, token.strip())
    if key is None:
        raise HttpError(401, "invalid or revoked API key", "Authorization", challenge)
    return key.id


Owner = Annotated[str, Depends(get_owner)]
