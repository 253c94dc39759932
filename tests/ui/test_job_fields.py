"""The dashboard shows what the user gave a job: its label in the job list and on its page,
with its metadata, its webhook and how the last delivery went, and its retries."""

from __future__ import annotations

import html
import re

from tests.api.helpers import caption_job, set_job


def text(page: str) -> str:
    """The page's visible text, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_label_metadata_webhook_and_retries_are_shown(client, database_url, set_env):
    set_env(egress_allow_http="true", egress_allow="127.0.0.1:9")
    job = caption_job(
        client,
        label="nightly <crawl>",
        metadata={"team": "vision", "ticket": "JB-11"},
        webhook_url="http://127.0.0.1:9/hook",
    )
    plain = caption_job(client)
    listing = client.get("/ui")
    assert "nightly &lt;crawl&gt;" in listing.text  # escaped, never markup
    body = text(listing.text)
    assert f"{job['id']} nightly <crawl>" in body and plain["id"] in body

    page = text(client.get(f"/ui/jobs/{job['id']}").text)
    assert "nightly <crawl>" in page
    assert "team vision" in page and "ticket JB-11" in page
    assert "Webhook http://127.0.0.1:9/hook : not sent yet" in page
    assert "Retried" not in page

    set_job(
        database_url,
        job["id"],
        retry_count=2,
        webhook_state="retrying",
        webhook_attempts=3,
        webhook_response=503,
    )
    page = text(client.get(f"/ui/jobs/{job['id']}").text)
    assert "Webhook http://127.0.0.1:9/hook : retrying (HTTP 503, 3 attempts)" in page
    assert "Retried 2 times, last" in page
