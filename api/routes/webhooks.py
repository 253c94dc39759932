"""/v1/webhooks/secret: the secret that signs the webhooks of the caller's jobs."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import Owner, SettingsDep
from api.errors import error_responses
from janus_batch import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookSecretPublic(BaseModel):
    """How to check that a webhook came from this service (README: Webhooks)."""

    object: str = "webhook_secret"
    secret: str = Field(description="The HMAC-SHA256 key: keep it as safe as an API key.")
    signature_header: str = "X-Janus-Signature"
    timestamp_header: str = "X-Janus-Timestamp"
    signed: str = Field(
        default="timestamp + '.' + body",
        description="What is signed; the header holds 'v1=' and the hex digest.",
    )


@router.get("/secret", response_model=WebhookSecretPublic, responses=error_responses(401))
def get_secret(settings: SettingsDep, owner: Owner) -> WebhookSecretPublic:
    """Your webhook signing secret: one per API key in keys mode (made on first use), the
    server's in open mode."""
    return WebhookSecretPublic(secret=webhooks.signing_secret(settings, owner))
