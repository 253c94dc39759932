"""A small HTTP client of the janus-batch API (used by the CLI and the main job).

Every failure becomes an `ApiError` with a one-line message a person can act on:

    cannot reach the API at http://127.0.0.1:8000 (connection refused): is it running? ...
    unauthorized (401): invalid or revoked API key. Pass --api-key or set JANUS_BATCH_API_KEY.
    not found (404): no job 'job_0123'
    invalid request (422): items[3].image: unsupported image reference scheme 'ftp' ...

The client is safe to share between threads (one httpx connection pool), which the CLI
does for concurrent uploads and downloads.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import httpx

FINAL_STATUSES = {"succeeded", "failed", "cancelled", "expired"}
MAX_MESSAGE = 300

REASONS = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    409: "conflict",
    413: "too large",
    422: "invalid request",
    429: "too many requests",
    500: "server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


class ApiError(Exception):
    """A request to the API failed; the message says why in one line. `status` is the HTTP
    code, or None when no answer came (connection refused, timeout)."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` on one line (whitespace runs collapsed), cut at `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def error_message(response: httpx.Response) -> tuple[str, str | None]:
    """(one-line message, field) of an error response in the API's
    `{"error": {"message", "field"}}` shape, FastAPI's `{"detail": ...}`, or plain text."""
    code = response.status_code
    field = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail")
            field = err.get("field") if isinstance(err.get("field"), str) else None
        else:
            message = err
        message = message if isinstance(message, str) and message else response.text
    else:
        message = response.text
    message = one_line(message or response.reason_phrase or "no details")
    reason = REASONS.get(code, "server error" if code >= 500 else "request failed")
    if field and code in (400, 413, 422) and field not in message:
        message = f"{field}: {message}"
    text = f"{reason} ({code}): {message}"
    if code == 401:
        text = f"{text.rstrip('.')}. Pass --api-key or set JANUS_BATCH_API_KEY."
    elif code == 503:
        text = f"{text}; try again shortly"
    return text, field


class Client:
    """Talks to one API server with one (optional) key."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )
        self._transport = transport
        self._plain: httpx.Client | None = None

    def close(self) -> None:
        self._http.close()
        if self._plain is not None:
            self._plain.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------
    def _unreachable(self, err: httpx.HTTPError, path: str) -> ApiError:
        if isinstance(err, httpx.ConnectError):
            cause = str(err).lower()
            why = (
                "connection refused"
                if "refused" in cause or "111" in cause
                else one_line(str(err) or "cannot connect", 120)
            )
            return ApiError(
                f"cannot reach the API at {self.base_url} ({why}): is it running? "
                "Pass --api-url or set JANUS_BATCH_API_URL."
            )
        if isinstance(err, httpx.TimeoutException):
            return ApiError(f"the API at {self.base_url} did not answer in time ({path})")
        return ApiError(f"request to {self.base_url}{path} failed: {one_line(str(err), 200)}")

    @staticmethod
    def _error(response: httpx.Response) -> ApiError:
        message, field = error_message(response)
        return ApiError(message, response.status_code, field)

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kw)
        except httpx.HTTPError as err:
            raise self._unreachable(err, path) from None
        if response.status_code >= 400:
            raise self._error(response)
        return response

    @contextmanager
    def _stream(
        self, method: str, path: str, http: httpx.Client | None = None, **kw: Any
    ) -> Iterator[httpx.Response]:
        """A streamed response whose transport and HTTP errors become ApiError."""
        http = http or self._http
        try:
            with http.stream(method, path, **kw) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._error(response)
                yield response
        except httpx.HTTPError as err:
            raise self._unreachable(err, path) from None

    # -- routes ---------------------------------------------------------------------------
    def health(self) -> bool:
        try:
            return self._http.get("/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def create_job(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/v1/jobs", json=body, headers=headers).json()

    def get_job(self, job_id: str) -> dict:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def list_jobs(self, **params: Any) -> dict:
        query = {k: v for k, v in params.items() if v is not None}
        return self._request("GET", "/v1/jobs", params=query).json()

    def cancel_job(self, job_id: str) -> dict:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def delete_job(self, job_id: str) -> dict:
        """Delete a finished job (its outputs and rows); what was removed."""
        return self._request("DELETE", f"/v1/jobs/{job_id}").json()

    def delete_file(self, file_id: str) -> dict:
        """Delete an uploaded file; what was removed."""
        return self._request("DELETE", f"/v1/files/{file_id}").json()

    def retry_job(self, job_id: str, errors: list[str] | None = None) -> dict:
        """Retry the job's failed items (of these error classes, or all); the job."""
        body = {"errors": errors} if errors is not None else None
        return self._request("POST", f"/v1/jobs/{job_id}/retry", json=body).json()

    def webhook_secret(self) -> dict:
        """The secret that signs your jobs' webhooks, and how it is used."""
        return self._request("GET", "/v1/webhooks/secret").json()

    def items(self, job_id: str, **params: Any) -> dict:
        query = {k: v for k, v in params.items() if v is not None}
        return self._request("GET", f"/v1/jobs/{job_id}/items", params=query).json()

    def iter_results(self, job_id: str, errors: bool = False) -> Iterator[str]:
        """Lines of the job's results.jsonl (or errors.jsonl), streamed."""
        params = {"errors": "true"} if errors else {}
        with self._stream("GET", f"/v1/jobs/{job_id}/results", params=params) as response:
            for line in response.iter_lines():
                if line.strip():
                    yield line

    def download(self, job_id: str, key: str, dest: Path) -> int:
        """Stream one output object of a job (by its storage key) to `dest` atomically;
        returns the bytes written."""
        return self._save(self._stream("GET", f"/v1/jobs/{job_id}/files/{key}"), dest)

    def download_url(self, url: str, dest: Path) -> int:
        """Fetch an absolute (e.g. presigned) URL to `dest` without this client's key."""
        if self._plain is None:
            self._plain = httpx.Client(
                timeout=self._http.timeout, transport=self._transport, follow_redirects=True
            )
        return self._save(self._stream("GET", url, http=self._plain), dest)

    def download_file(self, file_id: str, dest: Path) -> int:
        """The bytes of an uploaded file (`GET /v1/files/{id}/content`) to `dest`."""
        return self._save(self._stream("GET", f"/v1/files/{file_id}/content"), dest)

    @staticmethod
    def _save(stream: Any, dest: Path) -> int:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        size = 0
        try:
            with stream as response, tmp.open("wb") as fh:
                for block in response.iter_bytes():
                    fh.write(block)
                    size += len(block)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def find_file(self, sha256: str, purpose: str | None = None) -> dict | None:
        """An uploaded file of yours with these bytes, or None."""
        params = {"sha256": sha256, **({"purpose": purpose} if purpose else {})}
        data = self._request("GET", "/v1/files", params=params).json()
        files = data.get("data", data) if isinstance(data, dict) else data
        return files[0] if files else None

    def upload(self, path: Path, purpose: str = "image") -> tuple[dict, bool]:
        """Upload a file; returns (file, created). The same bytes uploaded before give the
        existing file and `created` False."""
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as fh:
            response = self._request(
                "POST",
                "/v1/files",
                files={"file": (path.name, fh, content_type)},
                data={"purpose": purpose},
            )
        return response.json(), response.status_code == 201

    def upload_file(self, path: Path, purpose: str = "image") -> dict:
        return self.upload(path, purpose)[0]
