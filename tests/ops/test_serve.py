"""`janus-batch serve` as a process: it starts the embedded stack (bundled Redis, SQLite, local
results, the tiny checkpoint) with Flower, holds its data dir against a second stack, refuses an
oversized request head, stops on SIGINT with no child left, and a second `serve` on the same
data dir finishes the job the first one left (then stops on SIGTERM)."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
from PIL import Image

from janus_batch.ops.stack import MAX_REQUEST_HEAD, Child, wait_http
from tests.services import free_port

ITEMS = 10


def _env(data: Path, tiny_checkpoint: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "JANUS_BATCH_DATA_DIR": str(data),
        # Nothing listens here: serve starts its bundled Redis (kept in the data dir).
        "JANUS_BATCH_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "JANUS_BATCH_MODEL": str(tiny_checkpoint),
        "JANUS_BATCH_DEVICE": "cpu",
        "JANUS_BATCH_DTYPE": "float32",
        "JANUS_BATCH_TORCH_THREADS": "1",
        # One item per chunk and one chunk open: the first serve stops with items pending.
        "JANUS_BATCH_CHUNK_SIZE": "1",
        "JANUS_BATCH_DISPATCH_WINDOW": "1",
        "JANUS_BATCH_MAX_NEW_TOKENS": "4",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "250",
    }
    for key in ("DATABASE_URL", "STORAGE_URL", "QUEUE_PREFIX", "AUTH_MODE", "FLOWER_URL"):
        env.pop(f"JANUS_BATCH_{key}", None)
    return env


def _serve(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "janus_batch.client.cli.main", "serve", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def _descendants(pid: int) -> set[int]:
    """Every process under `pid`, from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[ppid].append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children[todo.pop()]:
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _stop(proc: subprocess.Popen, signum: int, log: Path) -> str:
    """Send `signum`, expect exit 0 and no process of the stack left; returns the output."""
    children = _descendants(proc.pid)
    assert len(children) >= 5, children  # Redis, worker, control (+ its beat), API
    proc.send_signal(signum)
    assert proc.wait(90) == 0, log.read_text()
    assert not [pid for pid in children if _alive(pid)], log.read_text()
    return log.read_text()


def _job_row(data: Path, job_id: str) -> tuple[str, int]:
    db = sqlite3.connect(data / "janus-batch.db")
    try:
        query = "SELECT status, succeeded FROM jobs WHERE id = ?"
        status, succeeded = db.execute(query, (job_id,)).fetchone()
    finally:
        db.close()
    return status, succeeded


def test_serve_stops_cleanly_and_a_second_serve_resumes(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    data = tmp_path / "data"
    env = _env(data, tiny_checkpoint)
    port, flower_port = free_port(), free_port()
    api = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve-1.log"
    first = _serve(env, log, "--port", str(port), "--flower", "--flower-port", str(flower_port))
    second = None
    try:
        wait_http(f"{api}/healthz", Child("serve", first, log), 120)
        second = subprocess.Popen(
            [sys.executable, "-m", "janus_batch.client.cli.main", "serve", "--port", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_http(f"http://127.0.0.1:{flower_port}/healthcheck", Child("serve", first, log), 120)

        # The uvicorn command's limits: a request head far over the cap is refused, not
        # buffered (it arrives in several reads; a complete one under a read's size may pass).
        try:
            big = httpx.get(f"{api}/healthz", headers={"X-Big": "a" * (16 * MAX_REQUEST_HEAD)})
            assert big.status_code == 400
        except httpx.TransportError:
            pass  # the server closed the connection while the client was still sending
        assert httpx.get(f"{api}/healthz").status_code == 200

        # The data dir belongs to the running stack.
        refused = second.communicate(timeout=60)[1]
        assert second.returncode == 1
        assert f"already runs on {data} (pid {first.pid})" in " ".join(refused.split())

        image = io.BytesIO()
        Image.new("RGB", (32, 32), "red").save(image, format="PNG")
        upload = httpx.post(
            f"{api}/v1/files",
            data={"purpose": "image"},
            files={"file": ("red.png", image.getvalue())},
        )
        assert upload.status_code == 201, upload.text
        items = [{"image": upload.json()["id"], "custom_id": f"red-{i}"} for i in range(ITEMS)]
        _wait_for_text(log, "serving:", first)
        job = httpx.post(f"{api}/v1/jobs", json={"kind": "caption", "items": items}).json()
        out = _stop(first, signal.SIGINT, log)  # at once: one chunk open, the rest pending
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert "started the bundled one" in out
    assert f"dashboard: {api}/ui" in out
    assert f"Flower:    http://127.0.0.1:{flower_port}" in out
    assert "open mode, no API key needed" in out
    assert f"logs:      {data / 'logs'} (" in out
    assert "stopping" in out and out.rstrip().endswith("stopped")
    status, succeeded = _job_row(data, job["id"])
    assert status in ("queued", "running") and succeeded < ITEMS  # work was left

    log = tmp_path / "serve-2.log"
    again = _serve(env, log, "--port", str(port))
    try:
        wait_http(f"{api}/healthz", Child("serve", again, log), 120)
        deadline = time.monotonic() + 120
        while (state := httpx.get(f"{api}/v1/jobs/{job['id']}").json())["status"] != "succeeded":
            assert time.monotonic() < deadline, (state, log.read_text())
            time.sleep(0.3)
        out = _stop(again, signal.SIGTERM, log)
    finally:
        if again.poll() is None:
            again.kill()
    assert "resuming 1 unfinished job(s)" in out
    assert state["counts"]["succeeded"] == ITEMS
    manifest = data / "results" / "jobs" / job["id"] / "results.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(row["custom_id"] for row in rows) == sorted(i["custom_id"] for i in items)


def test_a_shared_redis_keeps_the_stacks_keys_under_its_data_dirs_prefix(tmp_path: Path) -> None:
    """On a Redis the stack does not own (JANUS_BATCH_REDIS_URL answered) an embedded stack
    puts its queues under a prefix named after its data dir: no kombu keys left bare in a
    shared DB 0, the same prefix after a restart, and two data dirs never take each other's
    chunks. The bundled Redis is the stack's own (no prefix); a configured prefix wins."""
    from janus_batch.ops.serve import queue_prefix
    from janus_batch.settings import Settings

    shared = Settings(queue_prefix="", database_url=None)
    first = queue_prefix(shared, tmp_path / "a", bundled=False)
    assert first.startswith("janus-batch-") and first.endswith(":")
    assert queue_prefix(shared, tmp_path / "a", bundled=False) == first
    assert queue_prefix(shared, tmp_path / "b", bundled=False) not in ("", first)
    assert queue_prefix(shared, tmp_path / "a", bundled=True) == ""
    mine = Settings(queue_prefix="mine:", database_url=None)
    assert queue_prefix(mine, tmp_path / "a", bundled=False) == "mine:"
