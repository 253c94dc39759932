"""`janus-batch list --json | head -1`: when the reader of stdout goes away the command exits
141 (128 + SIGPIPE) without a word, in a real process against a stub API on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from janus_batch.client.cli.common import BROKEN_PIPE

JOB = {
    "id": "job_0123456789abcdef01234567",
    "object": "job",
    "kind": "caption",
    "status": "succeeded",
    "counts": {"total": 1, "pending": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0},
    "created_at": "2026-11-22T01:15:15Z",
}


class _Jobs(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"data": [JOB] * 100, "has_more": False}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jobs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("args", [["list", "--json"], ["list"]])
def test_a_closed_stdout_ends_the_command_quietly(api_url: str, args: list[str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "janus_batch.client.cli.main", *args, "--api-url", api_url],
        env={**os.environ, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write, as `head` after a line
    stderr = proc.stderr.read().decode()
    assert proc.wait(60) == BROKEN_PIPE, stderr
    assert stderr == ""
