"""`pip install janus-batch` is the client alone: in a fresh venv with no torch, SQLAlchemy or
Celery, `janus-batch --help` and `janus-batch list` against a running API work, and the
operator commands say which extra they need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from janus_batch.ops.stack import api_command, free_port, spawn, wait_http

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding `pip install ROOT` (the client) and nothing else."""
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # A copy of the tree without the dev venv keeps the in-tree build off the checkout.
    src = tmp_path_factory.mktemp("client-src")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    done = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def _run(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_BATCH_")}
    return subprocess.run(
        [str(venv / "bin/janus-batch"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_the_client_installs_without_the_server_or_the_model(client_venv: Path) -> None:
    probe = subprocess.run(
        [
            str(client_venv / "bin/python"),
            "-c",
            (
                "import importlib.util as u; "
                "print([m for m in ('torch', 'sqlalchemy', 'celery', 'transformers', 'fastapi', "
                "'boto3') if u.find_spec(m)])"
            ),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "[]"
    helped = _run(client_venv, "--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("caption", "generate", "status", "list", "results"):
        assert command in helped.stdout


def test_client_lists_jobs_of_a_running_api(
    client_venv: Path, tmp_path: Path, redis_url: str, queue_prefix: str
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "JANUS_BATCH_DATA_DIR": str(tmp_path / "data"),
        "JANUS_BATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "JANUS_BATCH_REDIS_URL": redis_url,
        "JANUS_BATCH_QUEUE_PREFIX": queue_prefix,
        "JANUS_BATCH_AUTH_MODE": "open",
    }
    from janus_batch.db import dispose_engines
    from janus_batch.migrate import upgrade

    upgrade(env["JANUS_BATCH_DATABASE_URL"])
    dispose_engines()
    api = spawn("api", api_command(port), env, tmp_path / "logs")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", api)
        listed = _run(client_venv, "list", "--api-url", f"http://127.0.0.1:{port}", "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == {"data": [], "next_cursor": None, "has_more": False}
        api_url = f"http://127.0.0.1:{port}"
        job = httpx.post(f"{api_url}/v1/jobs", json={"kind": "generate", "items": ["a fox"]})
        shown = _run(client_venv, "status", job.json()["id"], "--api-url", api_url)
        assert shown.returncode == 0, shown.stderr
        # no worker runs here: the status says the job will wait
        assert "no live worker consumes this job's queue" in " ".join(shown.stdout.split())
    finally:
        api.stop()
    refused = _run(client_venv, "list", "--api-url", f"http://127.0.0.1:{port}")
    assert refused.returncode == 4 and "cannot reach the API" in refused.stderr


def test_operator_commands_name_the_extra_they_need(client_venv: Path) -> None:
    upgraded = _run(client_venv, "db", "upgrade")
    assert upgraded.returncode == 4
    assert "pip install 'janus-batch[server]'" in upgraded.stderr
    assert "no module" in upgraded.stderr
