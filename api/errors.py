"""Every error the API answers, as `{"error": {"message": ..., "field": ...}}`.

Service errors become HTTP codes here and only here: a bad input is 422 (413 when over a
size limit, 400 when the body cannot be read at all), an unknown job 404, a state conflict
409, a quota of the key 429 (with Retry-After; `field` names the limit), an unreachable
dependency 503, and anything else is a bug: logged with its traceback and answered 500.
`api.openapi` makes the OpenAPI document list the errors every route can answer, in this
shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as QueueError
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError as DatabaseError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.responses import Response
from starlette.types import ExceptionHandler

from janus_batch.inputs import InvalidInput, TooLarge
from janus_batch.jobs import JobConflict, JobNotFound
from janus_batch.quotas import QuotaExceeded
from janus_batch.storage import NotFoundError, StorageError

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Exception)

Responses: TypeAlias = dict[int | str, dict[str, Any]]
"""A route's `responses=` (OpenAPI documentation): status code -> response."""

_LOCATIONS = {"body", "query", "path", "header", "cookie"}


class ErrorDetail(BaseModel):
    """What went wrong, and the request field it is about (if any)."""

    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_responses(*codes: int) -> Responses:
    """`responses=` documenting that a route answers `codes` with an ErrorBody."""
    return {code: {"model": ErrorBody} for code in codes}


class HttpError(Exception):
    """An HTTP error raised by the API layer itself (e.g. authentication); not the client's
    `janus_batch.client.ApiError`, which is what a caller of the API sees."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped, so an error that quotes a malformed input
    (a lone surrogate) still encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON error response in the API's one shape."""
    body = {"error": {"message": message, "field": field}}
    return AsciiJSONResponse(body, status_code=status, headers=headers)


def field_name(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """`("body", "items", 3, "image")` -> `items[3].image`."""
    parts = list(loc)
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or (str(loc[0]) if loc else None)


def _validation_message(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        ctx = error.get("ctx") or {}
        return f"request body is not valid JSON ({ctx.get('error', 'parse error')})"
    if error.get("type") == "missing":
        return "is required"
    return str(error.get("msg", "is invalid"))


async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if not errors:
        return error_response(422, "invalid request")
    first = errors[0]
    field = field_name(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        field = "body"
    return error_response(422, _validation_message(first), field)


async def _on_invalid_input(_: Request, exc: InvalidInput) -> JSONResponse:
    status = 413 if isinstance(exc, TooLarge) else 422
    return error_response(status, str(exc), exc.field or None)


async def _on_http_error(_: Request, exc: HttpError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.field, exc.headers)


BODY_UNREADABLE = "There was an error parsing the body"
"""FastAPI's detail for a body it could not decode (its cause is chained)."""


def body_problem(exc: HTTPException) -> str | None:
    """Why the request body could not be read at all, or None when `exc` is about something
    else. FastAPI chains the cause to its 400; Starlette raises its own for bad multipart."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, UnicodeDecodeError):
        return f"is not valid UTF-8 (byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "is nested too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "holds a number too long to read (over 4,300 digits)"
    if isinstance(cause, MultiPartException):
        return f"is not valid multipart form data ({cause.message})"
    if exc.status_code == 400 and exc.detail == BODY_UNREADABLE:
        return "cannot be read"
    return None


async def _on_http(_: Request, exc: HTTPException) -> JSONResponse:
    headers = getattr(exc, "headers", None)
    if (problem := body_problem(exc)) is not None:
        return error_response(exc.status_code, f"body: {problem}", "body", headers)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    return error_response(exc.status_code, message, headers=headers)


async def _on_not_found(_: Request, exc: JobNotFound | NotFoundError) -> JSONResponse:
    field = "job_id" if isinstance(exc, JobNotFound) else None
    return error_response(404, str(exc), field)


async def _on_conflict(_: Request, exc: JobConflict) -> JSONResponse:
    return error_response(409, str(exc))


async def _on_quota(_: Request, exc: QuotaExceeded) -> JSONResponse:
    return error_response(429, str(exc), exc.limit, {"Retry-After": str(exc.retry_after)})


async def _on_unavailable(request: Request, exc: Exception) -> JSONResponse:
    what = {
        StorageError: "storage",
        DatabaseError: "database",
        QueueError: "queue",
        RedisConnectionError: "queue",
    }
    name = next((v for k, v in what.items() if isinstance(exc, k)), "a dependency")
    log.error("%s %s: %s unavailable: %s", request.method, request.url.path, name, exc)
    # the detail (addresses, driver text) is logged, never sent: it is internal
    return error_response(
        503,
        f"{name} unavailable; retry shortly (the details are in the server log)",
        headers={"Retry-After": "5"},
    )


async def _on_bug(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error (logged); please report it")


def _handle(
    app: FastAPI, exc_type: type[E], handler: Callable[[Request, E], Awaitable[Response]]
) -> None:
    """`app.add_exception_handler`, checking that `handler` takes `exc_type`. Starlette types
    every handler as taking any Exception, though it only calls one with an instance of the
    class it is registered for; the cast states exactly that."""
    app.add_exception_handler(exc_type, cast(ExceptionHandler, handler))


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the `{"error": {...}}` shape."""
    _handle(app, RequestValidationError, _on_validation)
    _handle(app, InvalidInput, _on_invalid_input)
    _handle(app, HttpError, _on_http_error)
    _handle(app, HTTPException, _on_http)
    _handle(app, JobNotFound, _on_not_found)
    _handle(app, NotFoundError, _on_not_found)
    _handle(app, JobConflict, _on_conflict)
    _handle(app, QuotaExceeded, _on_quota)
    for exc_type in (
        StorageError,
        DatabaseError,
        QueueError,
        RedisConnectionError,
    ):
        _handle(app, exc_type, _on_unavailable)
    _handle(app, Exception, _on_bug)
