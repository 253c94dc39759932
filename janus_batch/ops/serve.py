"""`janus-batch serve`: the one-machine stack on the embedded defaults, up until Ctrl-C.

SQLite and a local results folder in the data dir, the Redis at JANUS_BATCH_REDIS_URL or the
bundled one, the model at JANUS_BATCH_MODEL or (with a red warning) a tiny random one; the API,
one GPU worker, the control worker with the sweeper schedule, and Flower with `--flower`
(`janus_batch.ops.stack`). `embedded_stack` is shared with `janus-batch demo`, which is serve,
submit, print, stop.

Stopping (SIGINT, SIGTERM, SIGHUP): every child gets SIGTERM at once (a worker finishes its
running chunks), the ones left after `--stop-timeout` are killed (a second Ctrl-C kills at once),
then the bundled Redis stops, saving its queue. The SQL job table and that queue are all a
second `serve` on the same data dir needs to go on with unfinished jobs.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from janus_batch.client.cli.common import fail
from janus_batch.constants import CAPTION_QUEUE, CONTROL_QUEUE, GENERATE_QUEUE
from janus_batch.ops.embedded_redis import redis_answers, start_bundled
from janus_batch.ops.model_source import locate_model
from janus_batch.ops.stack import STOP_SECONDS, Stack, local_stack
from janus_batch.settings import Settings, get_settings

console = Console(highlight=False)
LOCK_FILE = "serve.lock"
DEFAULT_PORT = 8000
"""The API port: the CLI's default --api-url, so `serve` and `janus-batch caption` meet."""
DEFAULT_FLOWER_PORT = 5555
WORKERS_SECONDS = 300.0
"""How long the stack waits for its workers to consume before it says they are late."""
QUEUES = (CAPTION_QUEUE, GENERATE_QUEUE, CONTROL_QUEUE)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class StackError(RuntimeError):
    """The stack cannot start here (data dir in use, port taken, no Redis to be had)."""


class StopRequested(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP asked the stack to stop."""


@contextmanager
def stop_signals(hurry: threading.Event) -> Iterator[None]:
    """While the block runs, SIGINT, SIGTERM and SIGHUP raise StopRequested (once); a second
    one sets `hurry`, so the stop kills the children instead of waiting for them."""
    asked: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if asked:
            hurry.set()
            return
        asked.append(signum)
        raise StopRequested(signal.Signals(signum).name)

    names = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, on_signal) for signum in names}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir for one stack at a time (an flock, released even if the process is
    killed): two stacks on one SQLite file, beat schedule and bundled Redis would collide."""
    path = data_dir / LOCK_FILE
    handle: IO[str] = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StackError(
                f"a janus-batch serve or demo already runs on {data_dir} ({holder}): "
                "use it (janus-batch caption/generate/list talk to its API), stop it, or "
                "set another JANUS_BATCH_DATA_DIR"
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def check_port(host: str, port: int) -> None:
    """StackError unless `port` can be bound on `host`."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"cannot listen on {host}:{port} ({exc.strerror}): pass another --port"
            ) from None


def queue_prefix(settings: Settings, data_dir: Path, bundled: bool) -> str:
    """The Redis key prefix of the stack's queues: the configured one; none on the bundled
    Redis (it is the stack's own); else, on an embedded database, one named after the data dir,
    so stacks of different data dirs sharing a Redis never take each other's chunks."""
    if settings.queue_prefix or bundled or settings.database_url:
        return settings.queue_prefix
    return f"janus-batch-{hashlib.sha256(str(data_dir).encode()).hexdigest()[:8]}:"


def choose_model(data_dir: Path, model: str) -> str:
    """`model` if it can be loaded here, else a tiny random checkpoint in the data dir (made
    once), announced in a red box."""
    ok, how = locate_model(model)
    if ok:
        console.print(f"model: {how}")
        return model
    tiny = data_dir / "tiny-janus"
    console.print(
        Panel(
            f"[bold]The real checkpoint cannot be had here[/]: {escape(how)}.\n"
            f"Running on a TINY RANDOM checkpoint instead ({tiny}): the pipeline is real, "
            "the captions and images are noise.\nTo use Janus-Pro-1B: "
            "`huggingface-cli download deepseek-community/Janus-Pro-1B --local-dir ./Janus-Pro-1B` "
            "and set JANUS_BATCH_MODEL=./Janus-Pro-1B.",
            title="WARNING: no Janus-Pro checkpoint",
            border_style="red",
        )
    )
    if not (tiny / "config.json").is_file():
        from janus import make_tiny_checkpoint

        make_tiny_checkpoint(tiny, image_size=384)
    return str(tiny)


@dataclass
class Embedded:
    """A running embedded stack: its processes and the settings its children run with."""

    stack: Stack
    settings: Settings
    log_dir: Path


def _redis(settings: Settings, data_dir: Path, log_dir: Path, exits: ExitStack) -> str:
    """The Redis URL the stack uses: the configured one if it answers, else the bundled one
    (a child stopped last, after the workers have handed back their messages)."""
    if redis_answers(settings.redis_url):
        return settings.redis_url
    url, child = start_bundled(data_dir / "redis", log_dir, os.environ)
    exits.callback(child.stop, 10)
    console.print(
        f"[yellow]no Redis at {settings.redis_url}: started the bundled one at {url}[/] "
        f"(its queue kept in {data_dir / 'redis'})",
        soft_wrap=True,
    )
    return url


@contextmanager
def embedded_stack(
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    flower_port: int | None = None,
    stop_timeout: float = STOP_SECONDS,
    hurry: threading.Event | None = None,
) -> Iterator[Embedded]:
    """Run the stack on the embedded defaults (see the module) until the block ends; the
    children's logs go to data_dir/logs. `port` None picks a free one. StackError if it
    cannot start here."""
    from janus_batch.migrate import upgrade

    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir = data_dir / "logs"
    with ExitStack() as exits:
        exits.enter_context(data_dir_lock(data_dir))
        if port is not None:
            check_port(host, port)
        if flower_port is not None:
            check_port(host, flower_port)
        redis_url = _redis(settings, data_dir, log_dir, exits)
        prefix = queue_prefix(settings, data_dir, redis_url != settings.redis_url)
        if redis_url == settings.redis_url:
            shown = f" (keys under {prefix})" if prefix else ""
            console.print(f"Redis:     {redis_url}{shown}", soft_wrap=True)
        env = {
            "JANUS_BATCH_DATA_DIR": str(data_dir),
            "JANUS_BATCH_REDIS_URL": redis_url,
            "JANUS_BATCH_QUEUE_PREFIX": prefix,
            "JANUS_BATCH_MODEL": choose_model(data_dir, settings.model),
        }
        if flower_port is not None:
            env["JANUS_BATCH_FLOWER_URL"] = f"http://127.0.0.1:{flower_port}"
        settings = settings.model_copy(
            update={
                "data_dir": data_dir,
                "redis_url": redis_url,
                "queue_prefix": prefix,
                "model": env["JANUS_BATCH_MODEL"],
            }
        )
        upgrade(settings.resolved_database_url())
        console.print(f"database:  {settings.resolved_database_url()}", soft_wrap=True)
        console.print(f"results:   {settings.resolved_storage_url()}", soft_wrap=True)
        stack = exits.enter_context(
            local_stack(
                env,
                log_dir,
                api_port=port,
                host=host,
                flower_port=flower_port,
                stop_timeout=stop_timeout,
                hurry=hurry,
            )
        )
        wait_for_workers(stack, settings)
        yield Embedded(stack, settings, log_dir)


def wait_for_workers(stack: Stack, settings: Settings, timeout: float = WORKERS_SECONDS) -> None:
    """Until every queue has a live consumer (workers announce themselves in Redis once they
    consume; the GPU worker's engine may still be loading the model); RuntimeError if a child
    exits meanwhile; after `timeout`, a warning (jobs wait in the queue until one starts)."""
    import redis

    from janus_batch import fleet

    client = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            workers = fleet.live_workers(client, settings.queue_prefix)
            if all(fleet.consumers(workers, queue) for queue in QUEUES):
                console.print(f"workers:   {', '.join(sorted(workers))}", soft_wrap=True)
                return
            child = stack.exited()
            if child is not None:
                raise RuntimeError(
                    f"{child.name} exited with {child.proc.returncode} (log: {child.log}):\n"
                    + child.tail()
                )
            if time.monotonic() > deadline:
                console.print(
                    f"[yellow]no live worker for every queue after {timeout:.0f} s[/]: jobs wait "
                    f"until one starts (see {stack.worker.log})",
                    soft_wrap=True,
                )
                return
            time.sleep(0.2)
    finally:
        client.close()


def auth_note(settings: Settings, host: str) -> str:
    """What a client needs to be let in, in one line (rich markup)."""
    if settings.auth_mode == "open":
        if host in LOOPBACK:
            return (
                "open mode, no API key needed: the API listens on this machine only, where "
                "anyone may submit and read every job (JANUS_BATCH_AUTH_MODE=keys to require keys)"
            )
        return (
            f"[red]open mode on {escape(host)}, no API key needed: anyone who can reach this "
            "port may submit and read every job[/]; set JANUS_BATCH_AUTH_MODE=keys"
        )
    from janus_batch.keys import list_keys

    n = len(list_keys(settings.resolved_database_url(), include_revoked=False))
    if not n:
        return (
            "keys mode, and no active key yet: every request gets 401 until you run "
            "`janus-batch keys create NAME` (same JANUS_BATCH_DATA_DIR)"
        )
    return (
        f"keys mode: {n} active key(s); pass --api-key or JANUS_BATCH_API_KEY, or sign in on "
        "the dashboard"
    )


def unfinished(settings: Settings) -> tuple[int, int]:
    """Jobs not final yet and their items left (pending or running)."""
    from sqlalchemy import func, select

    from janus_batch.db import session_scope
    from janus_batch.models import Job
    from janus_batch.states import JOB_FINAL

    left = Job.total - Job.done
    with session_scope(settings.resolved_database_url()) as session:
        jobs, items = session.execute(
            select(func.count(), func.coalesce(func.sum(left), 0)).where(
                Job.status.not_in(list(JOB_FINAL))
            )
        ).one()
    return int(jobs), int(items)


def _announce(running: Embedded, host: str) -> None:
    stack, settings = running.stack, running.settings
    console.print(f"API:       {stack.api_url} (docs: {stack.api_url}/docs)")
    console.print(f"dashboard: [bold]{stack.api_url}/ui[/]")
    if stack.flower_url:
        console.print(f"Flower:    {stack.flower_url}")
    console.print(f"auth:      {auth_note(settings, host)}", soft_wrap=True)
    names = ", ".join(sorted(path.name for path in running.log_dir.glob("*.log")))
    console.print(f"logs:      {running.log_dir} ({names})", soft_wrap=True)
    jobs, items = unfinished(settings)
    if jobs:
        console.print(f"resuming {jobs} unfinished job(s), {items} item(s) left")


def _watch(stack: Stack) -> None:
    """Block until a child exits (an error: say which, with its log) or a signal stops it."""
    while True:
        child = stack.exited()
        if child is not None:
            console.print(
                f"[red]{child.name} exited with {child.proc.returncode}[/] (log: {child.log}):\n"
                + escape(child.tail()),
                soft_wrap=True,
            )
            raise typer.Exit(1)
        time.sleep(0.5)


def serve(
    port: Annotated[int, typer.Option(help="API port (the CLI's default --api-url).")] = (
        DEFAULT_PORT
    ),
    host: Annotated[
        str, typer.Option(help="Address the API (and Flower) listen on; 0.0.0.0 for all.")
    ] = "127.0.0.1",
    flower: Annotated[bool, typer.Option("--flower", help="Run Flower too.")] = False,
    flower_port: Annotated[int, typer.Option(help="Flower's port.")] = DEFAULT_FLOWER_PORT,
    stop_timeout: Annotated[
        float,
        typer.Option(min=0, help="Seconds running chunks get to finish on Ctrl-C before kill."),
    ] = 60.0,
) -> None:
    """Run the API, a worker, the sweeper schedule (and Flower) on the embedded defaults until
    Ctrl-C; a later `serve` on the same data dir goes on with unfinished jobs."""
    hurry = threading.Event()
    stack: Stack | None = None
    try:
        with (
            stop_signals(hurry),
            embedded_stack(
                port=port,
                host=host,
                flower_port=flower_port if flower else None,
                stop_timeout=stop_timeout,
                hurry=hurry,
            ) as running,
        ):
            stack = running.stack
            _announce(running, host)
            console.print("[green]serving[/]: Ctrl-C stops every process")
            try:
                _watch(stack)
            except StopRequested:
                console.print(
                    f"stopping: running chunks get up to {stop_timeout:.0f} s "
                    "(Ctrl-C again to stop at once)"
                )
                raise
    except StopRequested:
        pass
    except (StackError, RuntimeError) as exc:
        raise fail(str(exc), 1) from None
    _report_stop(stack)


def _report_stop(stack: Stack | None) -> None:
    if stack is None:
        console.print("stopped before the stack was up")
        return
    if stack.killed:
        names = ", ".join(child.name for child in stack.killed)
        console.print(
            f"[yellow]stopped; killed {names}[/]: items it was running go back to the queue "
            "when their lease runs out (JANUS_BATCH_LEASE_SECONDS)",
            soft_wrap=True,
        )
    else:
        console.print("stopped")
