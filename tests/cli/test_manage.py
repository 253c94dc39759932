"""Jobs a user manages, from the command line against a running API and Celery workers:
`--label` / `--meta` / `--webhook-url` / `--completion-window` on a submit, `list --label`,
`status`, `retry --only`, and `webhook-secret`; the webhook received (and retried once) by a
loopback receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from PIL import Image

from janus_batch.client.http import Client
from tests.cli.conftest import Cli, Stack
from tests.fixtures.s3 import REGION
from tests.fixtures.webhooks import Receiver, start_receiver

TIMEOUT = "120"


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    """One receiver for the module: its first answer is a 503 (the worker must retry)."""
    receiver, server = start_receiver()
    receiver.answers = [503, 204]
    yield receiver
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stack_settings(hooks: Receiver) -> dict[str, str]:
    return {
        "egress_allow_http": "true",
        "egress_allow": f"127.0.0.1:{hooks.port}",
        "webhook_retry_delay": "0.2",
    }


def put(stack: Stack, key: str, body: bytes) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=stack.s3.endpoint_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.put_object(Bucket=stack.s3.bucket, Key=key, Body=body)
    client.close()


def test_label_retry_and_webhook_from_the_command_line(
    cli: Cli, stack: Stack, hooks: Receiver, tmp_path: Path
) -> None:
    secret = cli("webhook-secret")
    assert secret.exit_code == 0, secret.stderr
    hooks.secret = secret.stdout.strip()  # the receiver checks each POST with it
    late = f"s3://{stack.s3.bucket}/late/cat.png"
    manifest = tmp_path / "todo.jsonl"
    manifest.write_text(
        json.dumps({"image": f"{stack.s3.prefix}cat.png", "custom_id": "cat"})
        + "\n"
        + json.dumps({"image": late, "custom_id": "late"})
        + "\n"
    )
    run = cli(
        "caption", manifest, "--label", "cli run", "--meta", "team=vision", "--meta", "n=2",
        "--webhook-url", hooks.url, "--completion-window", "6h",
        "--wait", "--interval", "0.2", "--timeout", TIMEOUT,
    )  # fmt: skip
    assert run.exit_code == 1, run.stderr  # one item failed
    job_id = run.job_id

    listed = cli("list", "--label", "cli run")
    assert listed.exit_code == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if job_id in line]
    assert "cli run" in row and "caption" in row
    assert cli("list", "--label", "other").stdout.count("job_") == 0

    first = hooks.wait_for(2)  # the 503, then the retry
    assert [(d.answered, d.verified) for d in first] == [(503, True), (204, True)]
    assert first[1].json["data"]["label"] == "cli run"
    assert first[1].json["data"]["metadata"] == {"team": "vision", "n": "2"}

    status = cli("status", job_id)
    shown = " ".join(status.stdout.split())
    assert "label cli run" in shown
    assert "metadata team='vision', n='2'" in shown
    assert f"webhook {hooks.url}: delivered (HTTP 204, 2 attempts)" in shown
    assert "late (fetch): cannot fetch" in shown
    assert "(window 6h)" in shown  # done well within it: not expired

    refused = cli("retry", job_id, "--only", "image")
    assert refused.exit_code == 4
    assert f"conflict (409): job {job_id} has no failed image items to retry" in refused.stderr
    bad = cli("retry", job_id, "--only", "net")
    assert bad.exit_code == 4 and "unknown error class 'net'" in bad.stderr

    put(stack, "late/cat.png", b"not an image")  # there now, but broken
    with Client(stack.api_url) as api:
        retried = cli("retry", job_id, "--only", "fetch", "--wait", "--interval", "0.2")
        assert retried.exit_code == 1, retried.stderr  # fetched now, but not an image
        assert "retrying 1 failed items of class fetch; 1 succeeded and 0 failed kept" in (
            " ".join(retried.stderr.split())
        )
        job = api.get_job(job_id)
        assert (job["retries"], job["counts"]["failed"]) == (1, 1)
        [item] = api.items(job_id, status="failed")["data"]
        assert item["error_class"] == "image"

        path = tmp_path / "cat.png"  # a real image this time
        Image.new("RGB", (32, 32), "orange").save(path)
        put(stack, "late/cat.png", path.read_bytes())
        again = cli("retry", job_id, "--wait", "--interval", "0.2", "--timeout", TIMEOUT)
        assert again.exit_code == 0, again.stderr
        job = api.get_job(job_id)
        assert (job["status"], job["retries"], job["counts"]["succeeded"]) == ("succeeded", 2, 2)
        assert (job["completion_window"], job["counts"]["expired"]) == ("6h", 0)  # a fresh one
    deliveries = hooks.wait_for(4)
    assert [d.headers["x-janus-delivery"] for d in deliveries] == [
        f"{job_id}.0",
        f"{job_id}.0",
        f"{job_id}.1",
        f"{job_id}.2",
    ]
    assert all(d.verified for d in deliveries)
    assert deliveries[-1].json["data"]["counts"]["failed"] == 0
