"""A small HTTP client of the janus-batch API (used by the CLI and the main job).

Every failure becomes an `ApiError` with a one-line message a person can act on.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

FINAL_STATUSES = {"succeeded", "failed", "cancelled"}


class ApiError(Exception):
    """A request to the API failed; the message says why in one line."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Client:
    """Talks to one API server with one (optional) key."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kw)
        except httpx.ConnectError:
            raise ApiError(
                f"cannot reach the API at {self.base_url} (connection refused): is it running? "
                "Start it with `uvicorn api.main:app` or set JANUS_BATCH_API_URL."
            ) from None
        except httpx.TimeoutException:
            raise ApiError(f"the API at {self.base_url} did not answer in time") from None
        except httpx.HTTPError as err:
            raise ApiError(f"request to {self.base_url}{path} failed: {err}") from None
        if response.status_code >= 400:
            raise ApiError(self._message(response), response.status_code)
        return response

    @staticmethod
    def _message(response: httpx.Response) -> str:
        code = response.status_code
        try:
            body = response.json()
            err = body.get("error", body) if isinstance(body, dict) else {}
            message = err.get("message") or err.get("detail") or response.text
            field = err.get("field")
        except ValueError:
            message, field = response.text.strip()[:300], None
        if code == 401:
            return f"unauthorized (401): {message}. Pass --api-key or set JANUS_BATCH_API_KEY."
        where = f" [{field}]" if field else ""
        return f"{code}: {message}{where}"

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

    def items(self, job_id: str, **params: Any) -> dict:
        query = {k: v for k, v in params.items() if v is not None}
        return self._request("GET", f"/v1/jobs/{job_id}/items", params=query).json()

    def iter_results(self, job_id: str, errors: bool = False) -> Iterator[str]:
        """Lines of the job's results.jsonl (or errors.jsonl), streamed."""
        params = {"errors": "true"} if errors else {}
        try:
            with self._http.stream(
                "GET", f"/v1/jobs/{job_id}/results", params=params
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(self._message(response), response.status_code)
                for line in response.iter_lines():
                    if line.strip():
                        yield line
        except httpx.ConnectError:
            raise ApiError(f"cannot reach the API at {self.base_url} (connection refused)") from None

    def download(self, job_id: str, key: str, dest: Path) -> None:
        """Stream one output object of a job (by its storage key) to `dest` atomically."""
        tmp = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._http.stream("GET", f"/v1/jobs/{job_id}/files/{key}") as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(self._message(response), response.status_code)
            with tmp.open("wb") as fh:
                for block in response.iter_bytes():
                    fh.write(block)
        tmp.replace(dest)

    def find_file(self, sha256: str) -> dict | None:
        data = self._request("GET", "/v1/files", params={"sha256": sha256}).json()
        files = data.get("data", data) if isinstance(data, dict) else data
        return files[0] if files else None

    def upload_file(self, path: Path, purpose: str = "image") -> dict:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as fh:
            return self._request(
                "POST",
                "/v1/files",
                files={"file": (path.name, fh, content_type)},
                data={"purpose": purpose},
            ).json()
