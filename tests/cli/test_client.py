"""The HTTP client's one-line error messages, on canned responses (httpx.MockTransport)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from janus_batch.client.http import ApiError, Client, one_line


def client_answering(handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    return Client("http://api.test", "secret", transport=httpx.MockTransport(handler))


def error_of(status: int, **body: object) -> str:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, **body)  # type: ignore[arg-type]

    with client_answering(handler) as client, pytest.raises(ApiError) as caught:
        client.get_job("job_1")
    assert caught.value.status == status
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_401_says_how_to_pass_a_key() -> None:
    body = {"error": {"message": "invalid or revoked API key", "field": "Authorization"}}
    assert error_of(401, json=body) == (
        "unauthorized (401): invalid or revoked API key. Pass --api-key or set JANUS_BATCH_API_KEY."
    )


def test_404_is_the_api_message() -> None:
    body = {"error": {"message": "no job 'job_1'", "field": "job_id"}}
    assert error_of(404, json=body) == "not found (404): no job 'job_1'"


def test_422_names_the_field_once() -> None:
    named = {"error": {"message": "items[3].image: bad scheme", "field": "items[3].image"}}
    assert error_of(422, json=named) == "invalid request (422): items[3].image: bad scheme"
    bare = {"error": {"message": "is required", "field": "kind"}}
    assert error_of(422, json=bare) == "invalid request (422): kind: is required"


def test_fastapi_detail_and_plain_text_bodies() -> None:
    assert error_of(409, json={"detail": "already final"}) == "conflict (409): already final"
    html = "<html>\n<body>\n  upstream\n  timed out\n</body></html>"
    assert (
        error_of(502, text=html)
        == "bad gateway (502): <html> <body> upstream timed out </body></html>"
    )
    assert error_of(503, json={"error": {"message": "queue unavailable: down"}}).endswith(
        "try again shortly"
    )


def test_connection_refused_is_one_line() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with client_answering(refuse) as client, pytest.raises(ApiError) as caught:
        client.list_jobs()
    assert caught.value.status is None
    assert str(caught.value) == (
        "cannot reach the API at http://api.test (connection refused): is it running? "
        "Pass --api-url or set JANUS_BATCH_API_URL."
    )


def test_streamed_errors_become_api_errors(tmp_path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "job job_1 has no file 'x'"}})

    with client_answering(handler) as client:
        with pytest.raises(ApiError, match=r"not found \(404\)"):
            list(client.iter_results("job_1"))
        with pytest.raises(ApiError, match=r"not found \(404\)"):
            client.download("job_1", "images/x.png", tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_the_key_is_sent_to_the_api_but_not_to_presigned_urls(tmp_path) -> None:
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.host] = request.headers.get("authorization")
        return httpx.Response(200, content=b"png bytes")

    with client_answering(handler) as client:
        client.download("job_1", "images/a.png", tmp_path / "a.png")
        client.download_url("https://bucket.s3.test/a.png?X-Amz-Signature=1", tmp_path / "b.png")
    assert seen == {"api.test": "Bearer secret", "bucket.s3.test": None}
    assert (tmp_path / "b.png").read_bytes() == b"png bytes"


def test_one_line() -> None:
    assert one_line("a\n  b\tc") == "a b c"
    assert len(one_line("x" * 1000)) == 300
