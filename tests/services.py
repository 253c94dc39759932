"""Start the machine's PostgreSQL and Redis when they are down (CI runs right after a
session, against the same services), and make throwaway databases and key spaces on them."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import redis

PG_HOST = os.environ.get("JB_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("JB_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("JB_TEST_PG_USER", "postgres")
REDIS_URL = os.environ.get("JB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at host:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: str, host: str, port: int, what: str) -> None:
    subprocess.run(command, shell=True, check=False, capture_output=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} is not running at {host}:{port} and `{command}` did not start it")


def ensure_redis() -> str:
    """The test Redis URL, starting the machine's Redis if it is down."""
    if not port_open("127.0.0.1", 6379):
        _start(REDIS_START, "127.0.0.1", 6379, "Redis")
    redis.Redis.from_url(REDIS_URL).ping()
    return REDIS_URL


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every Redis key under `prefix` (a test's private key space)."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


def ensure_postgres() -> None:
    """Start the machine's PostgreSQL if it is down."""
    if not port_open(PG_HOST, PG_PORT):
        _start(PG_START, PG_HOST, PG_PORT, "PostgreSQL")


def _admin() -> psycopg.Connection:
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
    )


def create_pg_database() -> tuple[str, str]:
    """Create a fresh database; returns (name, SQLAlchemy URL)."""
    ensure_postgres()
    name = f"jbtest_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def drop_pg_database(name: str) -> None:
    """Drop a test database, closing whatever still holds it."""
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


ROOT = Path(__file__).resolve().parents[1]


def process_env(
    base: Path,
    *,
    database_url: str,
    redis_url: str,
    queue_prefix: str,
    model: Path | None = None,
    **settings: str,
) -> dict[str, str]:
    """Environment of an API or worker child process on the test services: a database, a
    private Redis key space, local results under `base`, and (for workers) a model on the
    CPU with one thread. Extra keyword settings become JANUS_BATCH_<NAME> variables."""
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "JANUS_BATCH_DATA_DIR": str(base / "data"),
        "JANUS_BATCH_DATABASE_URL": database_url,
        "JANUS_BATCH_REDIS_URL": redis_url,
        "JANUS_BATCH_QUEUE_PREFIX": queue_prefix,
        "JANUS_BATCH_STORAGE_URL": str(base / "results"),
    }
    if model is not None:
        env.update(
            {
                "JANUS_BATCH_MODEL": str(model),
                "JANUS_BATCH_DEVICE": "cpu",
                "JANUS_BATCH_DTYPE": "float32",
                "JANUS_BATCH_TORCH_THREADS": "1",
            }
        )
    env.update({f"JANUS_BATCH_{name.upper()}": value for name, value in settings.items()})
    return env


def wait_inserting_items(database_url: str, timeout: float = 60.0) -> bool:
    """Wait until a session of this PostgreSQL database is inside a transaction that inserts
    items (running the INSERT, or between two pages of it); True once seen, False after
    `timeout`. Fault tests kill the API at that moment."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    dsn = f"host={url.host} port={url.port} user={url.username} dbname={url.database}"
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL "
                "AND query ILIKE 'INSERT INTO items%%'"
            ).fetchone()
            if row and row[0]:
                return True
            time.sleep(0.002)
    return False
