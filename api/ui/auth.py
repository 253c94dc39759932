"""Who is looking at the dashboard.

Open mode: everyone is the local owner. Keys mode: the API key arrives once, as `?key=` on
any page or through the login form, and is kept in an HttpOnly, SameSite=Lax cookie that the
pages, thumbnails and the JSON API (`api.deps.get_owner`) accept; a key sees only its jobs.
"""

from __future__ import annotations

from fastapi import Request, Response
from fastapi.responses import RedirectResponse

from api.deps import KEY_COOKIE, cookie_owner
from janus_batch.constants import LOCAL_OWNER
from janus_batch.settings import Settings

COOKIE_MAX_AGE = 30 * 24 * 3600


def page_owner(request: Request, settings: Settings) -> str | None:
    """The owner a page shows, or None when keys mode has no valid key cookie."""
    if settings.auth_mode == "open":
        return LOCAL_OWNER
    return cookie_owner(settings.resolved_database_url(), request.cookies.get(KEY_COOKIE))


def set_key_cookie(response: Response, request: Request, key: str) -> None:
    """Keep the key for the dashboard's later requests (not readable by scripts)."""
    response.set_cookie(
        KEY_COOKIE,
        key,
        max_age=COOKIE_MAX_AGE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def clear_key_cookie(response: Response) -> None:
    """Forget the key (log out)."""
    response.delete_cookie(KEY_COOKIE, path="/", httponly=True, samesite="lax")


def without_key(request: Request) -> str:
    """The request's path and query with `key` removed (where a `?key=` link redirects)."""
    pairs = [part for part in request.url.query.split("&") if part]
    query = "&".join(part for part in pairs if part.partition("=")[0] != "key")
    path = request.scope.get("root_path", "") + request.url.path
    return f"{path}?{query}" if query else path


def key_login(request: Request, settings: Settings) -> Response | None:
    """Handle `?key=`: a redirect to the same page without it (setting the cookie if the key
    is valid), or None when the request has no `key`. An invalid key is not stored."""
    key = request.query_params.get("key")
    if key is None:
        return None
    response = RedirectResponse(without_key(request), status_code=303)
    if settings.auth_mode == "keys":
        if cookie_owner(settings.resolved_database_url(), key) is None:
            return _bad_key(request)
        set_key_cookie(response, request, key)
    return response


def _bad_key(request: Request) -> Response:
    url = without_key(request)
    sep = "&" if "?" in url else "?"
    return RedirectResponse(f"{url}{sep}login_error=1", status_code=303)


def safe_next(value: str | None, root: str) -> str:
    """A local dashboard path to go to after logging in (never another site)."""
    if value and value.startswith(f"{root}/ui") and not value.startswith("//"):
        return value
    return f"{root}/ui"
