"""The submit API application: `uvicorn api.main:app` (or `create_app()` in tests).

The factory reads no settings: dependencies read `get_settings()` per request. Add a feature
by appending its router to ROUTERS (metrics and the dashboard plug in the same way).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from api import metrics, openapi
from api.errors import error_response, install_error_handlers
from api.hardening import SameOrigin, SecurityHeaders
from api.routes import files, health, jobs, webhooks
from api.ui import routes as ui
from janus_batch.settings import get_settings

ROUTERS: list[APIRouter] = [
    health.router,
    jobs.router,
    files.router,
    webhooks.router,
    metrics.router,
    ui.router,
]

MULTIPART_OVERHEAD = 64 * 1024
"""Room for the multipart envelope around an upload of the largest allowed size."""

DESCRIPTION = """Submit Janus-Pro batch jobs (image captioning, image generation), follow
their progress and download their results. Every error is
`{"error": {"message": ..., "field": ...}}`."""


class UploadLimit:
    """Answer 413 to an upload whose Content-Length already exceeds the limit, before its
    body is read (an upload without a length is counted while it is stored)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].rstrip("/") == files.router.prefix
        ):
            headers = dict(scope.get("headers") or [])
            length = headers.get(b"content-length", b"").decode("latin-1")
            limit = get_settings().max_upload_bytes
            if length.isdigit() and int(length) > limit + MULTIPART_OVERHEAD:
                message = f"file: is larger than the {limit:,}-byte upload limit"
                await error_response(413, message, "file")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def configure_logging() -> None:
    """INFO logs to stderr unless the host (uvicorn --log-config, pytest) configured logging."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Server start-up: logging (not at import, so importing the app configures nothing)."""
    configure_logging()
    yield


def create_app() -> FastAPI:
    """A new API application with every router and error handler installed."""
    app = FastAPI(title="janus-batch", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(UploadLimit)
    app.add_middleware(SameOrigin)  # a cross-site POST is refused before anything else
    app.add_middleware(SecurityHeaders)  # on every answer, 403s and 413s included
    metrics.install(app)  # outermost: times every request, 413s included
    for router in ROUTERS:
        app.include_router(router)
    openapi.install(app)
    return app


app = create_app()
