"""Webhooks: each terminal status of a job POSTed, signed, to the `webhook_url` it was
submitted with (or, without one, its API key's, taken when the job was created:
`keys.default_webhook_url`).

    POST <webhook_url>
    Content-Type: application/json
    X-Janus-Event: job.succeeded              (job.failed, job.cancelled, job.expired)
    X-Janus-Delivery: job_3f9c....0           (the job id and its retry count: the same for
                                               every attempt of one delivery; dedupe on it)
    X-Janus-Timestamp: 1765360000             (unix seconds of this attempt)
    X-Janus-Signature: v1=<hex>               (HMAC-SHA256 of timestamp + "." + body)

    {"type": "job.succeeded", "delivery": "job_3f9c....0", "data": {<the job object>}}

The job object is the one GET /v1/jobs/{id} answers (`janus_batch.jobview`), with presigned
manifest URLs on S3. The secret (`signing_secret`) is the owner's: in open mode one server
secret (JANUS_BATCH_WEBHOOK_SECRET, else `DATA_DIR/webhook-secret`, made on first use); in
keys mode one per API key, made on first use and kept with the key. Either is read with the
owner's credentials from GET /v1/webhooks/secret (`janus-batch webhook-secret`).

The finalize task queues a delivery (`lifecycle.queue_webhook`) and sends the control task
that runs `deliver`, so a slow receiver never holds a job's end. An attempt that gets no 2xx
answer is tried again with backoff (JANUS_BATCH_WEBHOOK_RETRY_DELAY doubling, up to
JANUS_BATCH_WEBHOOK_MAX_ATTEMPTS), a URL refused by the egress policy is not; each attempt
is recorded on the job (`webhook` in the job object). A delivery of a job that was retried
meanwhile is dropped: its next terminal status is delivered instead. A delivery whose message
was lost (the send failed at the job's end, a broker restart, a task that died before it
recorded its attempt) is sent again by the sweeper (`worker.sweeper.resend_webhooks`),
numbered after its last recorded attempt, within the same JANUS_BATCH_WEBHOOK_MAX_ATTEMPTS.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
from pydantic_core import to_json
from sqlalchemy import select, update

from janus_batch import lifecycle
from janus_batch.constants import ERRORS_NAME, LOCAL_OWNER, RESULTS_NAME
from janus_batch.db import session_scope
from janus_batch.egress import EgressPolicy, EgressRefused, make_client
from janus_batch.inputs import InvalidInput, check_text
from janus_batch.jobview import job_object
from janus_batch.models import ApiKey, Job
from janus_batch.settings import Settings
from janus_batch.states import JOB_FINAL
from janus_batch.storage import Storage

log = logging.getLogger(__name__)

MAX_URL = 2048
SECRET_FILE = "webhook-secret"
SECRET_PREFIX = "whsec_"
"""Webhook signing secrets start with it."""
SIGNATURE_VERSION = "v1"
RETRY_DELAY_MAX = 600.0
"""Longest wait between two attempts (seconds)."""
MAX_ERROR = 500


class WebhookState(StrEnum):
    """How the delivery of a job's last terminal status goes."""

    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"


DONE = frozenset({WebhookState.DELIVERED, WebhookState.FAILED})


def server_secret(settings: Settings) -> str:
    """The open mode's secret: JANUS_BATCH_WEBHOOK_SECRET, else the data dir's
    `webhook-secret` file, created (mode 0600) by the first caller."""
    if settings.webhook_secret:
        return settings.webhook_secret
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = new_webhook_secret()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    log.info("created the webhook signing secret %s", path)
    return secret


def new_webhook_secret() -> str:
    """A fresh webhook signing secret (`whsec_` + 43 URL-safe characters)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def webhook_secret(database_url: str, key_id: str) -> str | None:
    """The secret that signs the webhooks of the key's jobs, made on its first use (the first
    of concurrent callers wins, every one returns it); None if there is no such key."""
    with session_scope(database_url) as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.webhook_secret.is_(None))
            .values(webhook_secret=new_webhook_secret())
        )
    with session_scope(database_url) as session:
        return session.scalar(select(ApiKey.webhook_secret).where(ApiKey.id == key_id))


def signing_secret(settings: Settings, owner: str) -> str:
    """The secret that signs the webhooks of `owner`'s jobs (see the module's doc)."""
    if owner == LOCAL_OWNER:
        return server_secret(settings)
    secret = webhook_secret(settings.resolved_database_url(), owner)
    if secret is None:
        raise LookupError(f"no API key {owner!r}")
    return secret


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Janus-Signature` value of `body` sent at `timestamp`: `v1=<hex>`."""
    message = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """Whether a received webhook is genuine and fresh (what a receiver does; `headers`
    looked up case-insensitively if it is an httpx/starlette Headers)."""
    stamp, signature = headers.get("X-Janus-Timestamp", ""), headers.get("X-Janus-Signature", "")
    if not stamp.isdigit():
        return False
    if abs((now if now is not None else time.time()) - int(stamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(stamp), body), signature)


def check_url(settings: Settings, url: Any) -> str:
    """A job's `webhook_url`, accepted if the egress policy lets it be reached (as far as
    the URL tells: the address a name resolves to is checked when it is sent);
    InvalidInput naming `webhook_url` otherwise."""
    field = "webhook_url"
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput(field, "must be an http(s) URL")
    check_text(url, field)
    if len(url) > MAX_URL:
        raise InvalidInput(field, f"is longer than {MAX_URL} characters")
    try:
        EgressPolicy.from_settings(settings).check_url(url)
    except EgressRefused as exc:
        raise InvalidInput(field, f"'{url}' is {exc}: {exc.reason}") from None
    return url


def backoff(settings: Settings, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1, 2, ...)."""
    return float(min(RETRY_DELAY_MAX, settings.webhook_retry_delay * 2 ** (attempt - 1)))


def event_type(status: str) -> str:
    return f"job.{status}"


def delivery_id(job_id: str, event: int) -> str:
    return f"{job_id}.{event}"


def payload(job: Job, storage: Storage, event: int) -> bytes:
    """The body of a delivery: its type and id, and the job object."""
    data = job_object(
        job,
        0,
        storage,
        results_url=storage.presigned_url(f"{job.output_prefix}/{RESULTS_NAME}"),
        errors_url=storage.presigned_url(f"{job.output_prefix}/{ERRORS_NAME}"),
    )
    body = {"type": event_type(job.status), "delivery": delivery_id(job.id, event), "data": data}
    return to_json(body)


@dataclass(frozen=True)
class Attempt:
    """How one attempt went; `retry`: worth another attempt later."""

    state: WebhookState
    response: int | None = None
    error: str | None = None

    @property
    def retry(self) -> bool:
        return self.state == WebhookState.RETRYING


def _post(settings: Settings, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
    """One POST through the egress policy; no redirect is followed."""
    policy = EgressPolicy.from_settings(settings)
    try:
        policy.check_url(url)
        with (
            make_client(policy, max_connections=1) as client,
            client.stream(
                "POST", url, content=body, headers=headers, timeout=settings.webhook_timeout
            ) as response,
        ):
            code = response.status_code
    except EgressRefused as exc:
        log.warning("webhook to %s refused by the egress policy: %s", url, exc.reason)
        return Attempt(WebhookState.FAILED, error=str(exc))
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
        return Attempt(WebhookState.RETRYING, error=error)
    if 200 <= code < 300:
        return Attempt(WebhookState.DELIVERED, response=code)
    return Attempt(WebhookState.RETRYING, response=code, error=f"HTTP {code}")


def deliver(
    settings: Settings, storage: Storage, job_id: str, event: int, attempt: int
) -> Attempt | None:
    """Attempt number `attempt` of delivery `event` (the job's retry count when it ended),
    recorded on the job. None if there is nothing to deliver any more (the job was retried or
    deleted, or the delivery is over). The last allowed attempt that fails ends `failed`."""
    with session_scope(settings.resolved_database_url()) as session:
        job = session.get(Job, job_id)
    if job is None or not job.webhook_url or job.retry_count != event:
        return None
    if job.status not in JOB_FINAL or job.webhook_state in DONE:
        return None  # retried since, or a duplicate message of a delivery that is over
    try:
        secret = signing_secret(settings, job.owner)
    except LookupError as exc:  # the key was deleted: no attempt could ever be signed
        result = Attempt(WebhookState.FAILED, error=f"cannot sign the delivery: {exc}")
    else:
        body = payload(job, storage, event)
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "janus-batch-webhook",
            "X-Janus-Event": event_type(job.status),
            "X-Janus-Delivery": delivery_id(job_id, event),
            "X-Janus-Timestamp": str(stamp),
            "X-Janus-Signature": sign(secret, stamp, body),
        }
        result = _post(settings, job.webhook_url, body, headers)
    if result.retry and attempt >= settings.webhook_max_attempts:
        result = Attempt(WebhookState.FAILED, result.response, result.error)
    with session_scope(settings.resolved_database_url()) as session:
        recorded = lifecycle.record_webhook(
            session,
            job_id,
            event,
            state=result.state.value,
            attempts=attempt,
            response=result.response,
            error=result.error,
        )
    log.info(
        "job=%s webhook %s attempt %d: %s%s",
        job_id,
        delivery_id(job_id, event),
        attempt,
        result.state,
        f" ({result.error})" if result.error else "",
    )
    return result if recorded else None
