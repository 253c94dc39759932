"""Webhooks, end to end in one process: jobs submitted over the API with a `webhook_url`, run
by the in-process worker (whose send task runs as Celery would, retries included), POSTed to
a loopback receiver that checks each signature as README says."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.main import create_app
from janus_batch import constants, webhooks
from janus_batch.db import session_scope
from janus_batch.keys import create_key, update_key
from janus_batch.models import Job, utcnow
from tests.fixtures.webhooks import Receiver
from tests.worker.helpers import dispatch, drain, peek_messages, png_bytes, pop_message
from worker.context import Context
from worker.sweeper import sweep

LIVE_ONLY = {"live_workers", "notes", "waiting"}
"""Fields only a live API request fills in."""


@pytest.fixture
def hook_ctx(make_ctx: Callable[..., Context], receiver: Receiver) -> Context:
    """A worker whose egress policy lets webhooks reach the receiver (plain http, loopback)
    and that retries failed attempts after 10, 20, ... ms, three attempts at most."""
    return make_ctx(
        egress_allow_http="true",
        egress_allow=f"127.0.0.1:{receiver.port}",
        webhook_retry_delay="0.01",
        webhook_max_attempts="3",
    )


@pytest.fixture
def api(hook_ctx: Context) -> Iterator[TestClient]:
    with TestClient(create_app()) as client:
        yield client


def submit(
    api: TestClient, s3_env: Any, receiver: Receiver, names: list[str], **headers: str
) -> str:
    for name in names:
        if not name.startswith("missing"):
            s3_env.client().put_object(Bucket=s3_env.bucket, Key=name, Body=png_bytes())
    body = {
        "kind": "caption",
        "items": [{"image": f"s3://{s3_env.bucket}/{n}", "custom_id": n} for n in names],
        "webhook_url": receiver.url,
        "label": "hooked",
    }
    response = api.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_each_terminal_status_is_posted_signed_with_the_job_object(
    hook_ctx: Context, api: TestClient, s3_env: Any, receiver: Receiver
) -> None:
    job_id = submit(api, s3_env, receiver, ["a.png", "missing.png"])
    receiver.secret = api.get("/v1/webhooks/secret").json()["secret"]
    drain(hook_ctx)

    [first] = receiver.deliveries
    assert first.verified, first.headers
    assert first.path == "/hook"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-janus-event"] == "job.succeeded"
    assert first.headers["x-janus-delivery"] == f"{job_id}.0"
    body = first.json
    assert (body["type"], body["delivery"]) == ("job.succeeded", f"{job_id}.0")
    view = api.get(f"/v1/jobs/{job_id}").json()
    data = body["data"]
    assert set(data) == set(view) - LIVE_ONLY
    for key in set(data) - {"output", "webhook"}:
        assert data[key] == view[key], key
    assert (data["counts"]["succeeded"], data["counts"]["failed"], data["label"]) == (
        1,
        1,
        "hooked",
    )
    assert data["output"]["results"] == view["output"]["results"]
    assert data["output"]["results_url"] is None  # local storage: no presigned URL
    assert data["webhook"]["state"] == "pending"  # as it was when sent
    hook = view["webhook"]
    assert (hook["url"], hook["state"], hook["attempts"], hook["last_response"]) == (
        receiver.url,
        "delivered",
        1,
        204,
    )
    assert hook["last_attempt_at"] is not None and hook["last_error"] is None

    # retried, the job reaches a terminal status again: a second delivery
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="missing.png", Body=png_bytes())
    assert api.post(f"/v1/jobs/{job_id}/retry").status_code == 200
    drain(hook_ctx)
    [_, second] = receiver.deliveries
    assert second.verified
    assert second.headers["x-janus-delivery"] == f"{job_id}.1"
    data = second.json["data"]
    assert (data["counts"]["succeeded"], data["counts"]["failed"], data["retries"]) == (2, 0, 1)


def test_an_expired_job_posts_job_expired(
    hook_ctx: Context, api: TestClient, s3_env: Any, receiver: Receiver
) -> None:
    body = {
        "kind": "generate",
        "items": ["a lighthouse", "a fox"],
        "webhook_url": receiver.url,
        "completion_window": "1h",
    }
    job_id = api.post("/v1/jobs", json=body).json()["id"]
    receiver.secret = api.get("/v1/webhooks/secret").json()["secret"]
    with session_scope(hook_ctx.database_url) as session:  # the hour is over
        session.execute(
            update(Job).where(Job.id == job_id).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    drain(hook_ctx)
    [delivery] = receiver.deliveries
    assert delivery.verified
    assert delivery.headers["x-janus-event"] == "job.expired"
    data = delivery.json["data"]
    assert (delivery.json["type"], data["status"], data["counts"]["expired"]) == (
        "job.expired", "expired", 2,
    )  # fmt: skip


def test_finalize_hands_the_post_to_its_own_task(
    hook_ctx: Context, api: TestClient, s3_env: Any, receiver: Receiver
) -> None:
    job_id = submit(api, s3_env, receiver, ["a.png"])
    chunk = pop_message(hook_ctx, constants.CAPTION_QUEUE)
    assert chunk is not None
    dispatch(hook_ctx, *chunk)
    finalize = pop_message(hook_ctx, constants.CONTROL_QUEUE)
    assert finalize == (constants.FINALIZE_JOB_TASK, [job_id])
    dispatch(hook_ctx, *finalize)
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"  # the job's end does not wait for the receiver
    assert (job["webhook"]["state"], receiver.deliveries) == ("pending", [])
    assert peek_messages(hook_ctx, constants.CONTROL_QUEUE) == [
        (constants.SEND_WEBHOOK_TASK, [job_id, 0])
    ]
    drain(hook_ctx)
    assert api.get(f"/v1/jobs/{job_id}").json()["webhook"]["state"] == "delivered"


def test_failed_attempts_are_retried_with_backoff(
    hook_ctx: Context,
    api: TestClient,
    s3_env: Any,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    real = webhooks.backoff

    def backoff(settings: Any, attempt: int) -> float:
        waits.append(real(settings, attempt))
        return waits[-1]

    monkeypatch.setattr(webhooks, "backoff", backoff)
    receiver.answers = [500, 503, 204]
    job_id = submit(api, s3_env, receiver, ["a.png"])
    receiver.secret = api.get("/v1/webhooks/secret").json()["secret"]
    drain(hook_ctx)
    assert [d.answered for d in receiver.deliveries] == [500, 503, 204]
    assert all(d.verified for d in receiver.deliveries)
    assert {d.headers["x-janus-delivery"] for d in receiver.deliveries} == {f"{job_id}.0"}
    assert waits == [0.01, 0.02]
    hook = api.get(f"/v1/jobs/{job_id}").json()["webhook"]
    assert (hook["state"], hook["attempts"], hook["last_response"], hook["last_error"]) == (
        "delivered",
        3,
        204,
        None,
    )


def test_a_receiver_that_keeps_failing_is_given_up(
    hook_ctx: Context, api: TestClient, s3_env: Any, receiver: Receiver
) -> None:
    receiver.answers = [500]
    job_id = submit(api, s3_env, receiver, ["a.png"])
    drain(hook_ctx)
    assert len(receiver.deliveries) == 3  # JANUS_BATCH_WEBHOOK_MAX_ATTEMPTS
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    hook = job["webhook"]
    assert (hook["state"], hook["attempts"], hook["last_response"], hook["last_error"]) == (
        "failed",
        3,
        500,
        "HTTP 500",
    )


def test_a_slow_receiver_times_out(
    hook_ctx: Context,
    api: TestClient,
    s3_env: Any,
    receiver: Receiver,
    make_ctx: Callable[..., Context],
) -> None:
    receiver.delay = 2.0
    job_id = submit(api, s3_env, receiver, ["a.png"])
    drain(make_ctx(webhook_timeout="0.3", webhook_max_attempts="1"))
    hook = api.get(f"/v1/jobs/{job_id}").json()["webhook"]
    assert (hook["state"], hook["attempts"], hook["last_response"]) == ("failed", 1, None)
    assert hook["last_error"].startswith("ReadTimeout")


def test_the_egress_policy_is_applied_again_when_sending(
    hook_ctx: Context,
    api: TestClient,
    s3_env: Any,
    receiver: Receiver,
    make_ctx: Callable[..., Context],
) -> None:
    job_id = submit(api, s3_env, receiver, ["a.png"])
    strict = make_ctx(egress_allow="")  # the operator removed the allow-list meanwhile
    drain(strict)
    assert receiver.deliveries == []
    hook = api.get(f"/v1/jobs/{job_id}").json()["webhook"]
    assert (hook["state"], hook["attempts"], hook["last_error"]) == (
        "failed",  # never retried: it would be refused again
        1,
        "refused by the egress policy",
    )


def test_each_key_signs_its_own_jobs(
    hook_ctx: Context,
    api: TestClient,
    s3_env: Any,
    receiver: Receiver,
    make_ctx: Callable[..., Context],
) -> None:
    ctx = make_ctx(auth_mode="keys")
    keys = [create_key(ctx.database_url, name)[1] for name in ("alice", "bob")]
    auth = [{"Authorization": f"Bearer {key}"} for key in keys]
    secrets = [api.get("/v1/webhooks/secret", headers=h).json()["secret"] for h in auth]
    assert secrets[0] != secrets[1]
    jobs = [
        submit(api, s3_env, receiver, [f"{n}.png"], **h) for n, h in zip("ab", auth, strict=True)
    ]
    drain(ctx)
    by_job = {d.headers["x-janus-delivery"]: d for d in receiver.deliveries}
    for job_id, secret, other in zip(jobs, secrets, reversed(secrets), strict=True):
        delivery = by_job[f"{job_id}.0"]
        receiver.secret = secret
        assert receiver.verify(delivery.headers, delivery.body)
        receiver.secret = other
        assert not receiver.verify(delivery.headers, delivery.body)


def test_a_keys_webhook_url_is_taken_by_its_jobs_at_creation(
    hook_ctx: Context,
    api: TestClient,
    s3_env: Any,
    receiver: Receiver,
    make_ctx: Callable[..., Context],
) -> None:
    """A job the key submits without a webhook_url takes the key's (recorded on the job, so a
    later change of the key's URL leaves it alone) and is POSTed there, signed with the key's
    secret; a job's own URL wins over the key's."""
    ctx = make_ctx(auth_mode="keys")
    row, key = create_key(ctx.database_url, "ci", webhook_url=receiver.url, settings=ctx.settings)
    assert row.webhook_url == receiver.url
    auth = {"Authorization": f"Bearer {key}"}
    receiver.secret = api.get("/v1/webhooks/secret", headers=auth).json()["secret"]
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="k.png", Body=png_bytes())
    items = [{"image": f"s3://{s3_env.bucket}/k.png"}]

    def post(**extra: str) -> dict[str, Any]:
        body = {"kind": "caption", "items": items, **extra}
        response = api.post("/v1/jobs", json=body, headers=auth)
        assert response.status_code == 202, response.text
        return dict(response.json())

    job = post()
    assert job["webhook"]["url"] == receiver.url
    own = post(webhook_url=f"{receiver.url}/own")
    assert own["webhook"]["url"] == f"{receiver.url}/own"
    update_key(ctx.database_url, row.id, webhook_url="", settings=ctx.settings)
    assert post()["webhook"] is None  # cleared: the key's next jobs have none
    drain(ctx)

    by_job = {d.headers["x-janus-delivery"]: d for d in receiver.deliveries}
    assert set(by_job) == {f"{job['id']}.0", f"{own['id']}.0"}
    delivery = by_job[f"{job['id']}.0"]
    assert delivery.verified and delivery.path == "/hook"
    assert delivery.json["data"]["webhook"]["url"] == receiver.url
    assert by_job[f"{own['id']}.0"].path == "/hook/own"
    shown = api.get(f"/v1/jobs/{job['id']}", headers=auth).json()["webhook"]
    assert (shown["url"], shown["state"]) == (receiver.url, "delivered")  # kept after clearing


def test_a_lost_delivery_is_sent_again_by_the_sweeper_within_its_attempts(
    hook_ctx: Context, api: TestClient, s3_env: Any, receiver: Receiver
) -> None:
    job_id = submit(api, s3_env, receiver, ["a.png"])
    for _ in range(2):  # the chunk, then finalize
        dispatch(hook_ctx, *(pop_message(hook_ctx, constants.CAPTION_QUEUE)
                             or pop_message(hook_ctx, constants.CONTROL_QUEUE)))  # fmt: skip
    assert pop_message(hook_ctx, constants.CONTROL_QUEUE) == (
        constants.SEND_WEBHOOK_TASK,
        [job_id, 0],
    )  # and lost: a broker restart
    assert api.get(f"/v1/jobs/{job_id}").json()["webhook"]["state"] == "pending"
    assert sweep(hook_ctx, utcnow())["webhooks_resent"] == 0  # it may still be on its way
    later = utcnow() + timedelta(hours=1)
    assert sweep(hook_ctx, later)["webhooks_resent"] == 1
    assert sweep(hook_ctx, utcnow())["webhooks_resent"] == 0  # once per idle period
    drain(hook_ctx)
    assert len(receiver.deliveries) == 1
    hook = api.get(f"/v1/jobs/{job_id}").json()["webhook"]
    assert (hook["state"], hook["attempts"], hook["last_error"]) == ("delivered", 1, None)

    # a delivery whose every attempt was used (and whose last retry was lost) is given up
    with session_scope(hook_ctx.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            webhook_state="retrying", webhook_attempts=3, webhook_last_at=utcnow()))  # fmt: skip
    assert sweep(hook_ctx, utcnow() + timedelta(hours=2))["webhooks_resent"] == 0
    assert peek_messages(hook_ctx, constants.CONTROL_QUEUE) == []
    hook = api.get(f"/v1/jobs/{job_id}").json()["webhook"]
    assert (hook["state"], hook["attempts"]) == ("failed", 3)
    assert hook["last_error"] == "its message was lost with every attempt used: given up"


def test_a_delivery_that_cannot_be_signed_fails_at_once(
    hook_ctx: Context, api: TestClient, s3_env: Any, receiver: Receiver
) -> None:
    job_id = submit(api, s3_env, receiver, ["a.png"])
    with session_scope(hook_ctx.database_url) as session:  # its API key was deleted
        session.execute(update(Job).where(Job.id == job_id).values(owner="key_gone"))
    drain(hook_ctx)
    assert receiver.deliveries == []
    hook = hook_ctx_job_webhook(hook_ctx, job_id)
    assert (hook.webhook_state, hook.webhook_attempts) == ("failed", 1)
    assert hook.webhook_error == "cannot sign the delivery: no API key 'key_gone'"


def hook_ctx_job_webhook(ctx: Context, job_id: str) -> Job:
    with session_scope(ctx.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job
