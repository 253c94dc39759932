"""Start the API and a Celery worker as child processes on one machine, and stop them.

Used by the README's main job (`janus-batch demo`) and by the end-to-end tests: the same
commands a deployment runs, with logs in files.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from janus_batch.constants import CAPTION_QUEUE, CONTROL_QUEUE, GENERATE_QUEUE

GPU_QUEUES = f"{CAPTION_QUEUE},{GENERATE_QUEUE}"
ALL_QUEUES = f"{GPU_QUEUES},{CONTROL_QUEUE}"
CHUNKS_IN_FLIGHT = 16
"""Chunk tasks a GPU worker runs at once (its threads pool): their requests share passes."""


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_command(
    name: str = "worker",
    beat: bool = False,
    schedule: Path | None = None,
    *,
    queues: str = GPU_QUEUES,
    concurrency: int = CHUNKS_IN_FLIGHT,
) -> list[str]:
    """A GPU worker (one per GPU): a threads pool of `concurrency` chunks in flight feeding
    one engine thread; task events on for Flower (the main thread keeps heartbeating)."""
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app",
        "worker",
        "-P",
        "threads",
        "-c",
        str(concurrency),
        "-Q",
        queues,
        "-E",
        "-n",
        f"{name}@%h",
        "--loglevel",
        "INFO",
    ]
    if beat:
        cmd += ["-B", "-s", str(schedule or "celerybeat-schedule")]
    return cmd


def control_command(
    name: str = "control", beat: bool = True, schedule: Path | None = None
) -> list[str]:
    """The control worker (one per deployment, no model): expand, finalize and the sweeper
    (with its beat schedule), so control work never waits behind GPU work."""
    return worker_command(name, beat, schedule, queues=CONTROL_QUEUE, concurrency=2)


def api_command(port: int) -> list[str]:
    """The API server command line."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


@dataclass
class Child:
    """A child process with its log file."""

    name: str
    proc: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL if it lingers."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def tail(self, lines: int = 30) -> str:
        """The last lines of its log, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(name: str, cmd: list[str], env: Mapping[str, str], log_dir: Path) -> Child:
    """Start `cmd` with its output in log_dir/<name>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    fh = log.open("ab")
    proc = subprocess.Popen(cmd, env=dict(env), stdout=fh, stderr=subprocess.STDOUT)
    fh.close()
    return Child(name, proc, log)


def wait_http(url: str, child: Child, timeout: float = 60.0) -> None:
    """Wait until `url` answers 200, or fail with the child's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{child.name} did not answer at {url} in {timeout:.0f}s:\n{child.tail()}")


@dataclass
class Stack:
    """A running API, GPU worker and control worker."""

    api_url: str
    api: Child
    worker: Child
    control: Child

    @property
    def children(self) -> list[Child]:
        return [self.worker, self.control, self.api]


@contextmanager
def local_stack(
    env: Mapping[str, str], log_dir: Path, *, beat: bool = True, api_port: int | None = None
) -> Iterator[Stack]:
    """Run the API, one GPU worker and the control worker (with the sweeper schedule) until
    the block ends."""
    port = api_port or free_port()
    env = {**os.environ, **env}
    with ExitStack() as stack:
        worker = spawn("worker", worker_command("local"), env, log_dir)
        stack.callback(worker.stop)
        schedule = log_dir / "celerybeat-schedule"
        control = spawn("control", control_command("control", beat, schedule), env, log_dir)
        stack.callback(control.stop)
        api = spawn("api", api_command(port), env, log_dir)
        stack.callback(api.stop)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", api)
        yield Stack(url, api, worker, control)
