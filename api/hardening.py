"""HTTP hardening applied to every request, as two ASGI middlewares installed by `create_app`.

- `SameOrigin`: a state-changing request (POST, PUT, PATCH, DELETE) whose `Origin` (or, without
  one, `Referer`) names another site than the request's own `Host` is refused with 403, so
  another site cannot make a browser post the dashboard's forms (log a victim in as the
  attacker, log them out) or call the API with its cookie. A request with neither header is
  not a browser's cross-site request (curl, the CLI) and passes.
- `SecurityHeaders`: `X-Content-Type-Options: nosniff` on every response; a
  `Content-Security-Policy` on every response but the OpenAPI pages (which load Swagger UI
  from its CDN): dashboard pages may load scripts, styles and images from this origin only,
  everything else (JSON, uploads, results, images) gets `default-src 'none'` and `sandbox`,
  so user content opened in a tab runs no script; and `Content-Disposition: attachment` on
  any `/v1/` response other than JSON that does not set its own (user content downloads,
  it is never rendered on the API's origin).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}

DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The dashboard's pages: its own script, stylesheet and images; no inline code at all."""
CONTENT_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; sandbox"
"""Everything else: nothing loads, nothing runs (an image opened in a tab still shows; the
inline style is the browser's own for its image viewer)."""
UNCONFINED = ("/docs", "/redoc")
"""Swagger UI and ReDoc pages load their code from a CDN: no CSP there (they show no user
content)."""


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port or DEFAULT_PORTS.get(scheme, 0)


def same_origin(origin: str, host: str) -> bool:
    """Whether `origin` (an Origin or Referer value) names the site at `host` (the request's
    Host header). The scheme is not compared (a TLS-terminating proxy in front sees https
    where the API sees http); a Host without a port has the origin scheme's default port."""
    parts = urlsplit(origin)
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc:
        return False  # "null" (a sandboxed or privacy-restricted page), or no URL at all
    theirs = _host_port(parts.netloc, parts.scheme)
    ours = _host_port(host, parts.scheme)
    return theirs is not None and theirs == ours


def cross_site(headers: Headers) -> str | None:
    """The foreign origin a browser says a request comes from, or None when it comes from
    this site or from no browser page at all."""
    source = headers.get("origin") or headers.get("referer")
    if source is None:
        return None
    return None if same_origin(source, headers.get("host", "")) else source


class SameOrigin:
    """403 to a state-changing request that a browser sent from another site."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            headers = Headers(scope=scope)
            foreign = cross_site(headers)
            if foreign is not None:
                field = "Origin" if "origin" in headers else "Referer"
                shown = foreign if len(foreign) <= 100 else foreign[:100] + "..."
                message = (
                    f"{field}: a cross-site {scope['method']} is refused ({shown!r} is not "
                    f"this site, {headers.get('host', '')!r})"
                )
                await error_response(403, message, field)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _policy(path: str, content_type: str) -> str | None:
    if path.startswith(UNCONFINED):
        return None
    if path.startswith("/ui") and content_type.startswith("text/html"):
        return DASHBOARD_CSP
    return CONTENT_CSP


def _is_user_content(path: str, content_type: str) -> bool:
    return path.startswith("/v1/") and not content_type.startswith("application/json")


class SecurityHeaders:
    """nosniff, a Content-Security-Policy and, for user content, `attachment` (see module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                content_type = headers.get("content-type", "")
                headers["X-Content-Type-Options"] = "nosniff"
                policy = _policy(path, content_type)
                if policy is not None and "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = policy
                if (
                    _is_user_content(path, content_type)
                    and "content-disposition" not in headers
                    and 200 <= message["status"] < 300
                ):
                    headers["Content-Disposition"] = "attachment"
            await send(message)

        await self.app(scope, receive, send_with_headers)
