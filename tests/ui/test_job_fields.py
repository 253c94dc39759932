"""The dashboard shows what the user gave a job: its label in the job list and on its page,
with its metadata, its webhook and how the last delivery went, its retries, and its
completion window and expired items."""

from __future__ import annotations

import html
import re

from tests.api.helpers import caption_job, finish_items, set_job


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


def test_the_completion_window_and_expired_items_are_shown(client, database_url):
    job = caption_job(client, n=3, completion_window="24h")
    page = text(client.get(f"/ui/jobs/{job['id']}").text)
    assert "Expires (UTC)" in page and "(window 24h)" in page
    assert "Expired 0" in page
    assert "Expires" not in text(client.get(f"/ui/jobs/{caption_job(client)['id']}").text)

    error = "expired: not finished within the job's completion window (24h, ended 2026)"
    finish_items(database_url, job["id"], [0], result={"caption": "a cat"})
    finish_items(database_url, job["id"], [1, 2], "expired", error=error)
    set_job(database_url, job["id"], status="expired")
    raw = client.get(f"/ui/jobs/{job['id']}").text
    page = text(raw)
    assert "expired 1 done, 2 expired of 3" in page
    assert "Expired 2" in page and "(2 expired)" in page
    assert page.count(error) == 2  # both listed in the errors table
    assert "seg seg-expired" in raw
    listing = text(client.get("/ui").text)
    assert "1 done, 2 expired of 3" in listing
