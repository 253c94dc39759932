"""Start the API, a GPU worker, the control worker (with the sweeper schedule) and optionally
Flower as child processes on one machine, and stop them all.

The one owner of these processes: `janus-batch serve` and `janus-batch demo` (through
`janus_batch.ops.serve`) and the end-to-end tests start them here, with the same commands a
deployment runs and each child's output in its own log file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from janus_batch.constants import CAPTION_QUEUE, CONTROL_QUEUE, GENERATE_QUEUE

GPU_QUEUES = f"{CAPTION_QUEUE},{GENERATE_QUEUE}"
ALL_QUEUES = f"{GPU_QUEUES},{CONTROL_QUEUE}"
CHUNKS_IN_FLIGHT = 16
"""Chunk tasks a GPU worker runs at once (its threads pool): their requests share passes."""
MAX_REQUEST_HEAD = 64 * 1024
"""Most bytes of a request head (request line and headers) the API buffers while it is still
incomplete; a longer one is refused with 400 (uvicorn's h11 parser). Bodies (uploads) are
streamed, not bounded by it."""
API_CONCURRENCY = 256
"""Connections and requests the API serves at once; beyond it new ones get 503."""
KEEP_ALIVE_SECONDS = 5
"""An idle keep-alive connection is closed after this long."""
API_SHUTDOWN_SECONDS = 10
"""On SIGTERM the API finishes its open requests for at most this long (a long results stream
does not hold the stop)."""
STOP_SECONDS = 20.0
"""How long `local_stack` waits for its children to stop before it kills them."""


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


def api_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """The API server command line, with the limits an exposed port needs: the h11 parser
    with a cap on a request's head (uvicorn's default httptools parser buffers headers of any
    size), idle keep-alive connections closed, concurrency capped (503 beyond it), and a
    bounded graceful stop."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:app",
        "--host",
        host,
        "--port",
        str(port),
        "--http",
        "h11",
        "--h11-max-incomplete-event-size",
        str(MAX_REQUEST_HEAD),
        "--timeout-keep-alive",
        str(KEEP_ALIVE_SECONDS),
        "--limit-concurrency",
        str(API_CONCURRENCY),
        "--timeout-graceful-shutdown",
        str(API_SHUTDOWN_SECONDS),
        "--log-level",
        "warning",
    ]


def flower_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """Flower on the queue's Celery app (its /api routes need --basic-auth or
    FLOWER_UNAUTHENTICATED_API=true; the pages do not)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "janus_batch.celeryapp",
        "flower",
        f"--port={port}",
        f"--address={host}",
    ]


@dataclass
class Child:
    """A child process with its log file. It leads its own process group (see `spawn`), so
    a kill reaches what it started too (the embedded beat of a control worker)."""

    name: str
    proc: subprocess.Popen
    log: Path

    def terminate(self) -> None:
        """Ask it to stop: SIGTERM (a Celery worker finishes its running chunks first)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL its whole process group, then reap it."""
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """SIGTERM (warm shutdown), then SIGKILL if it lingers."""
        stop_all([self], timeout)

    def tail(self, lines: int = 30) -> str:
        """The last lines of its log, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_all(
    children: Sequence[Child], timeout: float, hurry: threading.Event | None = None
) -> list[Child]:
    """Stop the children together: SIGTERM to each, wait until all are gone, `timeout`
    passed or `hurry` is set, then SIGKILL the rest. A child that exited leaves no process
    of its group behind either. Returns the children that had to be killed."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (hurry is not None and hurry.is_set()):
        if all(child.proc.poll() is not None for child in children):
            break
        time.sleep(0.1)
    killed = [child for child in children if child.proc.poll() is None]
    for child in children:
        child.kill()  # the stragglers, and anything an exited child left in its group
    return killed


def spawn(name: str, cmd: list[str], env: Mapping[str, str], log_dir: Path) -> Child:
    """Start `cmd` with its output in log_dir/<name>.log, in a session of its own: a Ctrl-C
    in the terminal reaches the owner alone, which stops its children in order."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    fh = log.open("ab")
    proc = subprocess.Popen(
        cmd, env=dict(env), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )
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
    """A running API, GPU worker and control worker (and Flower, if asked for)."""

    api_url: str
    api: Child
    worker: Child
    control: Child
    flower: Child | None = None
    flower_url: str | None = None
    killed: list[Child] = field(default_factory=list)
    """The children that had to be killed when the stack stopped."""

    @property
    def children(self) -> list[Child]:
        return [self.worker, self.control, self.api, *([self.flower] if self.flower else [])]

    def exited(self) -> Child | None:
        """A child that is no longer running, if any."""
        return next((c for c in self.children if c.proc.poll() is not None), None)


@contextmanager
def local_stack(
    env: Mapping[str, str],
    log_dir: Path,
    *,
    beat: bool = True,
    api_port: int | None = None,
    host: str = "127.0.0.1",
    flower_port: int | None = None,
    stop_timeout: float = STOP_SECONDS,
    hurry: threading.Event | None = None,
) -> Iterator[Stack]:
    """Run the API, one GPU worker and the control worker (with the sweeper schedule unless
    `beat` is off), and Flower when `flower_port` is given, until the block ends; then stop
    them together (`stop_all`: `stop_timeout`, or until `hurry` is set)."""
    port = api_port or free_port()
    env = {**os.environ, **env}
    started: list[Child] = []
    stack: Stack | None = None
    with ExitStack() as exits:

        @exits.callback
        def stop() -> None:
            killed = stop_all(started, stop_timeout, hurry)
            if stack is not None:
                stack.killed = killed

        started.append(spawn("worker", worker_command("local"), env, log_dir))
        schedule = log_dir / "celerybeat-schedule"
        started.append(spawn("control", control_command("control", beat, schedule), env, log_dir))
        api = spawn("api", api_command(port, host), env, log_dir)
        started.append(api)
        url = f"http://{_client_host(host)}:{port}"
        wait_http(f"{url}/healthz", api)
        flower = flower_url = None
        if flower_port is not None:
            flower = spawn("flower", flower_command(flower_port, host), env, log_dir)
            started.append(flower)
            flower_url = f"http://{_client_host(host)}:{flower_port}"
            wait_http(f"{flower_url}/healthcheck", flower)
        stack = Stack(url, api, started[0], started[1], flower, flower_url)
        yield stack


def _client_host(host: str) -> str:
    """Where a local client reaches a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
