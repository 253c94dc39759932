"""`janus-batch results` stays memory-flat: the same command on a manifest 50 times longer
grows its peak RSS by a bounded amount (each run in its own subprocess, its peak read from
getrusage), served by a loopback stand-in for the API that makes the lines as it sends them.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.fixtures.datasets import loopback_server

SMALL, LARGE = 2_000, 100_000
ITEMS_PER_SHARD = 1_000
BOUND_MIB = 25
"""Allowed peak growth from SMALL to LARGE lines; keeping every line in memory (the old
`results`) grows by over 100 MiB at LARGE."""


def _shard() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("00000000_0.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    return out.getvalue()


def _line(kind: str, i: int) -> bytes:
    words = " ".join(f"word{i % 97}" for _ in range(40))
    if kind == "caption":
        line = {"idx": i, "custom_id": f"photos/{i % 10}/img_{i}.png", "caption": words,
                "input": {"image": f"file_{i:024x}", "prompt": "Describe the image."}}  # fmt: skip
    else:
        shard = f"jobs/job_x/shards/{i - i % ITEMS_PER_SHARD:08d}-1.tar"
        line = {"idx": i, "custom_id": f"c{i}", "input": {"prompt": words},
                "images": [{"key": shard, "member": f"{i:08d}_0.png", "range": [512, 100],
                            "seed": i, "index": 0}]}  # fmt: skip
    return json.dumps(line).encode() + b"\n"


@contextmanager
def stand_in_api() -> Iterator[str]:
    """A loopback server answering GET /v1/jobs/<kind>-<n> (a succeeded job), its results
    (n lines, made as they are sent) and any file of it (one small shard)."""
    shard = _shard()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            parts = self.path.split("?")[0].strip("/").split("/")  # v1 jobs <kind>-<n> ...
            kind, n = parts[2].split("-")
            if len(parts) == 3:
                body = json.dumps({"id": parts[2], "kind": kind, "status": "succeeded"})
                self._send(body.encode())
            elif parts[3] == "results":
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                for i in range(int(n)):
                    self.wfile.write(_line(kind, i))
            else:
                self._send(shard)

        def _send(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with loopback_server(Handler) as base:
        yield base


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    with stand_in_api() as url:
        yield url


RUN = """
import resource, sys
from janus_batch.client.cli.main import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_mib(api_url: str, job: str, out: Path, cwd: Path | None = None) -> float:
    """Peak RSS of `janus-batch results JOB --out OUT` in a subprocess (run in `cwd`, so
    another checkout's code can be measured)."""
    done = subprocess.run(
        [sys.executable, "-c", RUN, "results", job, "--out", str(out), "--api-url", api_url],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peak = [line for line in done.stdout.splitlines() if line.startswith("PEAK_KIB")]
    return int(peak[-1].split()[1]) / 1024


@pytest.mark.parametrize("kind", ["caption", "generate"])
def test_results_memory_is_flat_in_the_manifest_length(
    api_url: str, tmp_path: Path, kind: str
) -> None:
    small = peak_mib(api_url, f"{kind}-{SMALL}", tmp_path / "small")
    large = peak_mib(api_url, f"{kind}-{LARGE}", tmp_path / "large")
    out = tmp_path / "large"
    assert sum(1 for _ in (out / "results.jsonl").open()) == LARGE
    table = "captions.csv" if kind == "caption" else "images.csv"
    assert sum(1 for _ in (out / table).open()) == LARGE + 1
    if kind == "generate":  # every shard downloaded once
        assert len(list((out / "shards").iterdir())) == LARGE // ITEMS_PER_SHARD
    assert large - small < BOUND_MIB, f"peak RSS {small:.0f} MiB -> {large:.0f} MiB"
