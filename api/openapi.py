"""The OpenAPI document says what the API answers: errors that any route can give are added
to every operation they apply to, in the one error shape (`ErrorBody`), not FastAPI's default
`HTTPValidationError`, which the API never sends.

A route documents its own errors (`api.errors.error_responses`); added here, where missing:
400 for an operation with a body (it may be unreadable: not UTF-8, nested too deeply, a number
too long, malformed multipart), 403 for a state-changing one (sent by a browser from another
site, `api.hardening.SameOrigin`), 422 for one with any parameter or body.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from api.errors import ErrorBody
from api.hardening import UNSAFE_METHODS

REF = "#/components/schemas/"
ERROR_REF = {"$ref": f"{REF}ErrorBody"}
UNUSED_DEFAULTS = ("HTTPValidationError", "ValidationError")

COMMON = {
    "400": "The body cannot be read at all (not UTF-8, nested too deeply, a number over "
    "4,300 digits, malformed multipart); `field` is `body`.",
    "403": "A browser sent it from another site (its Origin or Referer is not this host).",
    "422": "A field is invalid; `field` names it.",
}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def _document_operation(method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    has_body = "requestBody" in operation
    codes = set()
    if has_body:
        codes.add("400")
    if method.upper() in UNSAFE_METHODS:
        codes.add("403")
    if has_body or operation.get("parameters"):
        codes.add("422")
    for code in sorted(codes):
        responses.setdefault(code, _error_response(COMMON[code]))
    for code, response in responses.items():
        if code.startswith(("4", "5")) and "HTTPValidationError" in json.dumps(response):
            responses[code] = _error_response(COMMON.get(code, response.get("description", "")))


def _add_error_schemas(schemas: dict[str, Any]) -> None:
    if "ErrorBody" in schemas:
        return
    body = ErrorBody.model_json_schema(ref_template=REF + "{model}")
    schemas.update(body.pop("$defs", {}))
    schemas["ErrorBody"] = body


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the errors every route can answer to `schema` (an OpenAPI document), in place."""
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            _document_operation(method, operation)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    _add_error_schemas(schemas)
    for name in UNUSED_DEFAULTS:
        if name in schemas and f"{REF}{name}" not in json.dumps(
            {k: v for k, v in schema.items() if k != "components"}
        ):
            del schemas[name]
    return schema


def install(app: FastAPI) -> None:
    """Serve `app`'s OpenAPI document with the common errors documented."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
