"""FastAPI dependencies, as `Annotated` aliases routes declare in their signatures.

Settings are read per request through the cached `get_settings()`, never at import, so a
test (or a reload) that changes the environment and clears the cache gets a fresh view.
"""

from __future__ import annotations

import threading
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header

from api.errors import ApiError
from janus_batch.constants import LOCAL_OWNER
from janus_batch.keys import verify_key
from janus_batch.queue import get_celery
from janus_batch.settings import Settings, get_settings
from janus_batch.storage import Storage, StorageError, storage_from_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]

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


def get_owner(
    settings: SettingsDep,
    database_url: DatabaseUrl,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> str:
    """Who is asking: the API key's id in `keys` mode, the single local owner in `open` mode."""
    if settings.auth_mode == "open":
        return LOCAL_OWNER
    challenge = {"WWW-Authenticate": "Bearer"}
    if not authorization:
        raise ApiError(
            401,
            "an API key is required: send 'Authorization: Bearer <key>'",
            "Authorization",
            challenge,
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "malformed Authorization header: use 'Bearer <key>'", "Authorization", challenge
        )
    key = verify_key(database_url, token.strip())
    if key is None:
        raise ApiError(401, "invalid or revoked API key", "Authorization", challenge)
    return key.id


Owner = Annotated[str, Depends(get_owner)]
