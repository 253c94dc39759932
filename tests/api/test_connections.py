"""The API as deployed (README's uvicorn command, `janus_batch.ops.stack.api_command`, in a real
process): an oversized request head is refused at once, 200 slow clients do not slow anyone
else down, and the deployment files run the same command."""

from __future__ import annotations

import os
import re
import shlex
import socket
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import pytest
import yaml

from janus_batch.migrate import upgrade
from janus_batch.ops.stack import api_command, free_port, spawn, wait_http

ROOT = Path(__file__).resolve().parents[2]
SLOW_CLIENTS = 200
HUGE_HEADER = 1024 * 1024


@pytest.fixture
def api_url(tmp_path: Path, redis_url: str, queue_prefix: str) -> Iterator[str]:
    """The API under uvicorn with the deployed flags, on a fresh SQLite database."""
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(db)
    env = {
        **os.environ,
        "JANUS_BATCH_DATA_DIR": str(tmp_path / "data"),
        "JANUS_BATCH_DATABASE_URL": db,
        "JANUS_BATCH_STORAGE_URL": str(tmp_path / "results"),
        "JANUS_BATCH_REDIS_URL": redis_url,
        "JANUS_BATCH_QUEUE_PREFIX": queue_prefix,
    }
    port = free_port()
    child = spawn("api", api_command(port), env, tmp_path / "logs")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", child)
        yield url
    finally:
        child.stop()


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _timed_healthz(url: str) -> float:
    start = time.monotonic()
    response = httpx.get(f"{url}/healthz", timeout=10)
    assert response.status_code == 200, response.text
    return time.monotonic() - start


def test_a_one_mib_header_is_refused_quickly(api_url: str) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * HUGE_HEADER + b"\r\n\r\n"
    start = time.monotonic()
    with socket.create_connection(_address(api_url), timeout=5) as sock:
        with suppress(OSError):  # refused part way: the server closed the connection
            sock.sendall(head)
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            answer = b""
    elapsed = time.monotonic() - start
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/1.") else b"closed"
    assert status in (b"400", b"431", b"closed"), answer[:200]
    assert elapsed < 2.0, f"took {elapsed:.2f}s to refuse a 1 MiB header"
    assert _timed_healthz(api_url) < 1.0  # and everyone else is still served


def test_healthz_stays_fast_while_200_slow_clients_hold_connections(api_url: str) -> None:
    address = _address(api_url)
    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW_CLIENTS):  # each sends part of a request head, never the end
            sock = socket.create_connection(address, timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        worst = 0.0
        for line in range(3):  # they keep trickling header lines while others are served
            for sock in slow:
                sock.sendall(f"X-Slow-{line}: 1\r\n".encode())
            worst = max(worst, *(_timed_healthz(api_url) for _ in range(5)))
            time.sleep(0.2)
        assert worst < 1.0, f"/healthz took {worst:.2f}s with {SLOW_CLIENTS} slow clients"
    finally:
        for sock in slow:
            sock.close()


LIMIT_FLAGS = (
    "--http",
    "--h11-max-incomplete-event-size",
    "--timeout-keep-alive",
    "--limit-concurrency",
    "--timeout-graceful-shutdown",
)


def _flags(argv: list[str]) -> dict[str, str]:
    return {flag: argv[argv.index(flag) + 1] for flag in LIMIT_FLAGS if flag in argv}


def test_readme_and_compose_run_the_api_with_the_same_limits() -> None:
    expected = _flags(api_command(8000))
    assert set(expected) == set(LIMIT_FLAGS)
    readme = (ROOT / "README.md").read_text()
    documented = re.search(r"^uvicorn api\.main:app .*?(?<!\\)$", readme, re.MULTILINE | re.DOTALL)
    assert documented, "README shows no uvicorn command with flags"
    assert _flags(shlex.split(documented.group(0).replace("\\\n", " "))) == expected
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert _flags(compose["services"]["api"]["command"]) == expected
