"""Fixtures of the CLI tests: the `janus-batch` app run in-process (`cli`), and one running
API + Celery worker per module (`stack`) on SQLite, the test Redis (a private key space), a
local results folder, moto S3 for inputs, and the tiny checkpoint."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from PIL import Image
from typer.testing import CliRunner

from janus_batch.client.cli.main import app
from janus_batch.settings import get_settings
from tests import services
from tests.fixtures.s3 import REGION, MotoServer, empty_and_delete_bucket

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass
class Run:
    """What one CLI invocation did."""

    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def job_id(self) -> str:
        """The job id a submit command printed alone on stdout's first line."""
        return self.stdout.splitlines()[0].strip()


Cli = Callable[..., Run]


def invoke(env: dict[str, str], *args: Any) -> Run:
    """Run `janus-batch ARGS` in this process with `env` set (and the settings re-read)."""
    get_settings.cache_clear()
    try:
        result = CliRunner(env=env).invoke(app, [str(a) for a in args])
    finally:
        get_settings.cache_clear()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug: show its traceback
    return Run(result.exit_code, result.stdout, result.stderr, result.exception)


@dataclass
class S3Inputs:
    """A bucket on the moto server holding two small images under `pics/`."""

    endpoint_url: str
    bucket: str

    @property
    def prefix(self) -> str:
        return f"s3://{self.bucket}/pics/"


@dataclass
class Stack:
    """A running API + worker and what the CLI needs to reach it."""

    api_url: str
    env: dict[str, str]
    storage: Path
    s3: S3Inputs
    log_dir: Path


@pytest.fixture(scope="module")
def s3_inputs(moto_server: MotoServer) -> Iterator[S3Inputs]:
    moto_server.start()
    client = boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket = f"cli-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    for name, color in (("pics/cat.png", "orange"), ("pics/deep/dog.jpg", "brown")):
        data = io.BytesIO()
        Image.new("RGB", (40, 40), color).save(
            data, format="JPEG" if name.endswith("jpg") else "PNG"
        )
        client.put_object(Bucket=bucket, Key=name, Body=data.getvalue())
    try:
        yield S3Inputs(moto_server.endpoint_url, bucket)
    finally:
        empty_and_delete_bucket(client, bucket)
        client.close()


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, str]:
    """Extra settings of the module's stack (name -> value); a module overrides it."""
    return {}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    tiny_checkpoint: Path,
    s3_inputs: S3Inputs,
    stack_settings: dict[str, str],
) -> Iterator[Stack]:
    """The API and one worker (real processes) for a whole test module."""
    from janus_batch.db import dispose_engines
    from janus_batch.migrate import upgrade
    from janus_batch.ops.stack import local_stack

    base = tmp_path_factory.mktemp("cli-stack")
    database_url = f"sqlite:///{base / 'jobs.db'}"
    upgrade(database_url)
    dispose_engines()
    prefix = f"jbtest-cli-{uuid.uuid4().hex[:8]}:"
    env = {
        **services.process_env(
            base,
            database_url=database_url,
            redis_url=redis_url,
            queue_prefix=prefix,
            model=tiny_checkpoint,
            chunk_size="8",
            batch_rows="8",
            max_retries="1",
            s3_endpoint_url=s3_inputs.endpoint_url,
            s3_region=REGION,
            **stack_settings,
        ),
        **AWS_ENV,
    }
    try:
        with local_stack(env, base / "logs") as running:
            yield Stack(
                running.api_url,
                {**env, "JANUS_BATCH_API_URL": running.api_url},
                base / "results",
                s3_inputs,
                base / "logs",
            )
    finally:
        services.delete_prefix(redis_url, prefix)


@pytest.fixture(scope="module")
def cli(stack: Stack) -> Cli:
    """`cli("status", job_id)`: run a command against the module's stack."""
    return lambda *args: invoke(stack.env, *args)


def draw_images(folder: Path, corrupt: bool = True) -> Path:
    """A few small images (one in a subfolder), a non-image file and optionally a corrupt
    .png; returns the folder."""
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), "red").save(folder / "red.png")
    Image.new("RGB", (48, 32), "blue").save(folder / "blue.jpg")
    Image.new("RGB", (32, 48), "green").save(folder / "sub" / "green.webp")
    (folder / "notes.md").write_text("not an image")
    if corrupt:
        (folder / "broken.png").write_bytes(b"this is not a png")
    return folder
