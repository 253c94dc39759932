"""GET a job (live counts, rate, ETA), list jobs and items with cursors and filters, stream
results (partial from SQL while running, the stored file once final), download outputs."""

from __future__ import annotations

import json
from pathlib import Path

from janus_batch.states import ItemStatus
from tests.api.helpers import caption_job, finish_items, set_item_status, set_job


def test_get_job_live_counts_rate_and_eta(client, database_url):
    job = caption_job(client, n=10)
    finish_items(database_url, job["id"], [0, 1, 2, 3])
    finish_items(database_url, job["id"], [4], ItemStatus.FAILED, error="cannot read image")
    set_item_status(database_url, job["id"], [5, 6], "running")

    got = client.get(f"/v1/jobs/{job['id']}").json()
    assert got["status"] == "running"
    assert got["counts"] == {
        "total": 10, "pending": 3, "running": 2, "succeeded": 4, "failed": 1, "cancelled": 0,
        "expired": 0,
    }  # fmt: skip
    assert got["started_at"] is not None and got["started_at"].endswith("Z")
    # 5 processed in ~10 s -> ~0.5/s; 5 left -> ~10 s
    assert 0.3 < got["items_per_second"] < 0.6
    assert 7 < got["eta_seconds"] < 16

    set_job(database_url, job["id"], status="succeeded")
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["eta_seconds"] == 0


def test_list_jobs_cursor_pagination_and_filters(client, database_url):
    ids = [caption_job(client, n=1)["id"] for _ in range(5)]
    gen = client.post("/v1/jobs", json={"kind": "generate", "items": ["fox"]}).json()["id"]
    set_job(database_url, ids[1], status="succeeded")

    seen: list[str] = []
    after = None
    for _ in range(5):
        params = {"limit": 2, **({"after": after} if after else {})}
        page = client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["data"]]
        assert page["has_more"] == (page["next_cursor"] is not None)
        if not page["has_more"]:
            break
        after = page["next_cursor"]
    assert seen == [gen, *reversed(ids)]  # newest first, no gaps or repeats

    captions = client.get("/v1/jobs", params={"kind": "caption", "limit": 100}).json()
    assert [j["id"] for j in captions["data"]] == list(reversed(ids))
    done = client.get("/v1/jobs", params={"status": "succeeded"}).json()
    assert [j["id"] for j in done["data"]] == [ids[1]]
    assert done["has_more"] is False and done["next_cursor"] is None


def test_items_pagination_and_status_filter(client, database_url):
    job = caption_job(client, n=7)
    finish_items(database_url, job["id"], [1, 4], result={"caption": "a cat"})
    url = f"/v1/jobs/{job['id']}/items"

    first = client.get(url, params={"limit": 3}).json()
    assert [i["idx"] for i in first["data"]] == [0, 1, 2]
    assert first["has_more"] is True and first["next_cursor"] == "2"
    second = client.get(url, params={"limit": 3, "after": first["next_cursor"]}).json()
    assert [i["idx"] for i in second["data"]] == [3, 4, 5]
    last = client.get(url, params={"limit": 3, "after": second["next_cursor"]}).json()
    assert [i["idx"] for i in last["data"]] == [6] and last["has_more"] is False

    done = client.get(url, params={"status": "succeeded"}).json()["data"]
    assert [i["idx"] for i in done] == [1, 4]
    item = done[0]
    assert item["custom_id"] == "c1"
    assert item["result"] == {"caption": "a cat"}
    assert item["input"]["image"] == "s3://bucket/img1.jpg"
    assert item["attempts"] == 1 and item["finished_at"] is not None and item["error"] is None


def _lines(response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def test_results_stream_partial_from_sql(client, database_url):
    job = caption_job(client, n=4, params={"prompt": "Describe."})
    finish_items(database_url, job["id"], [2, 0], result={"caption": "a dog"})
    finish_items(database_url, job["id"], [3], ItemStatus.FAILED, error="404 Not Found")

    response = client.get(f"/v1/jobs/{job['id']}/results")
    assert response.headers["x-partial"] == "true"
    lines = _lines(response)
    assert [line["idx"] for line in lines] == [0, 2]
    seeds = [i["input"]["seed"] for i in client.get(f"/v1/jobs/{job['id']}/items").json()["data"]]
    assert lines[0] == {
        "custom_id": "c0",
        "idx": 0,
        "input": {"image": "s3://bucket/img0.jpg", "uri": "s3://bucket/img0.jpg",
                  "prompt": "Describe.", "seed": seeds[0]},
        "caption": "a dog",
        "model": job["model"],
        "params": job["params"],
        "status": "succeeded",
    }  # fmt: skip

    errors = _lines(client.get(f"/v1/jobs/{job['id']}/results", params={"errors": "true"}))
    assert errors == [
        {"custom_id": "c3", "idx": 3, "input": lines[0]["input"] | {
            "image": "s3://bucket/img3.jpg", "uri": "s3://bucket/img3.jpg", "seed": seeds[3]},
         "error": "404 Not Found", "status": "failed"}
    ]  # fmt: skip


def test_generate_results_lines_and_paging(client, database_url, monkeypatch):
    from janus_batch import items, results

    pages = []
    real = items.session_scope

    def counting(url):
        pages.append(url)
        return real(url)

    monkeypatch.setattr(results, "PAGE", 2)
    monkeypatch.setattr(items, "session_scope", counting)  # several SQL pages for a few items
    body = {"kind": "generate", "items": [{"prompt": f"p{i}", "seed": i} for i in range(5)]}
    job = client.post("/v1/jobs", json=body).json()
    for idx in range(5):
        key = f"jobs/{job['id']}/images/{idx:08d}_0.png"
        image = {"key": key, "uri": f"file:///x/{key}", "seed": idx, "index": 0}
        finish_items(database_url, job["id"], [idx], result={"images": [image], "format": "png"})
    pages.clear()  # count the reads of the results only
    lines = _lines(client.get(f"/v1/jobs/{job['id']}/results"))
    assert [line["idx"] for line in lines] == [0, 1, 2, 3, 4]
    assert len(pages) == 3  # pages of 2, 2, 1
    assert lines[3]["images"] == [
        {"key": f"jobs/{job['id']}/images/00000003_0.png",
         "uri": f"file:///x/jobs/{job['id']}/images/00000003_0.png", "seed": 3, "index": 0}
    ]  # fmt: skip
    assert lines[3]["format"] == "png"
    assert lines[3]["input"]["prompt"] == "p3" and "caption" not in lines[3]


def test_final_job_streams_stored_results_and_files(client, settings_env, database_url):
    job = caption_job(client, n=2)
    root = Path(settings_env.resolved_storage_url()) / "jobs" / job["id"]
    (root / "images").mkdir(parents=True)
    (root / "results.jsonl").write_text('{"from": "storage"}\n')
    (root / "images" / "00000000_0.png").write_bytes(b"\x89PNG fake")

    # while running, results come from SQL (none succeeded yet)
    assert client.get(f"/v1/jobs/{job['id']}/results").text == ""
    set_job(database_url, job["id"], status="succeeded")
    response = client.get(f"/v1/jobs/{job['id']}/results")
    assert response.text == '{"from": "storage"}\n' and "x-partial" not in response.headers
    # no errors.jsonl stored: built from SQL (empty)
    assert client.get(f"/v1/jobs/{job['id']}/results", params={"errors": True}).text == ""

    full_key = f"jobs/{job['id']}/images/00000000_0.png"
    for key in (full_key, "images/00000000_0.png"):
        download = client.get(f"/v1/jobs/{job['id']}/files/{key}")
        assert download.status_code == 200
        assert download.content == b"\x89PNG fake"
        assert download.headers["content-type"] == "image/png"
    other = caption_job(client, n=1)
    outside = client.get(f"/v1/jobs/{other['id']}/files/{full_key}")
    assert outside.status_code == 404  # resolved under the other job's prefix: not there
    escape = client.get(f"/v1/jobs/{job['id']}/files/images/..%2F..%2F{other['id']}/x.png")
    assert escape.status_code == 422 and escape.json()["error"]["field"] == "key"


def test_a_job_waiting_on_storage_says_so_and_has_no_eta(client, database_url):
    """Items deferred by a transient error (the worker's path: claim, then a pending outcome)
    show on the job as `waiting` since the first of them, with no ETA; a success clears it."""
    from janus_batch import lifecycle
    from janus_batch.db import session_scope

    job = caption_job(client, n=3)
    reason = "waiting: cannot fetch s3://b/0.jpg: Could not connect to the endpoint URL"
    with session_scope(database_url) as session:
        ids = [i for (i,) in session.execute(_item_ids(job["id"]))]
        claimed = lifecycle.claim(session, job["id"], ids, lease_seconds=60)
        lifecycle.complete(
            session,
            [lifecycle.Outcome(c, ItemStatus.PENDING, error=reason, delay=5) for c in claimed[:2]]
            + [lifecycle.Outcome(claimed[2], ItemStatus.FAILED, error="not an image")],
        )
    got = client.get(f"/v1/jobs/{job['id']}").json()
    assert got["waiting"]["reason"] == reason and got["waiting"]["since"].endswith("Z")
    assert got["eta_seconds"] is None and got["counts"]["pending"] == 2
    items = client.get(f"/v1/jobs/{job['id']}/items", params={"status": "pending"}).json()
    assert [i["error"] for i in items["data"]] == [reason, reason]

    with session_scope(database_url) as session:
        again = lifecycle.claim(session, job["id"], ids[:1], lease_seconds=60)
        lifecycle.complete(
            session, [lifecycle.Outcome(again[0], ItemStatus.SUCCEEDED, result={"caption": "x"})]
        )
    assert client.get(f"/v1/jobs/{job['id']}").json()["waiting"] is None


def test_expired_leases_without_a_sweeper_are_noted(client, database_url, settings_env):
    import redis

    from janus_batch import fleet

    job = caption_job(client, n=2)
    from datetime import timedelta

    from sqlalchemy import update

    from janus_batch.db import session_scope
    from janus_batch.models import Item, utcnow

    set_item_status(database_url, job["id"], [0], "running")
    with session_scope(database_url) as session:  # its worker died: the lease ran out
        session.execute(
            update(Item)
            .where(Item.job_id == job["id"], Item.idx == 0)
            .values(lease_until=utcnow() - timedelta(seconds=5))
        )
    notes = client.get(f"/v1/jobs/{job['id']}").json()["notes"]
    assert len(notes) == 1 and "1 items wait on expired leases" in notes[0]
    assert client.get(f"/v1/jobs/{job['id']}").json()["eta_seconds"] is None
    assert "sweeper has never run" in notes[0]
    fleet.record_sweep(redis.Redis.from_url(settings_env.redis_url), settings_env.queue_prefix)
    assert client.get(f"/v1/jobs/{job['id']}").json()["notes"] == []


def _item_ids(job_id: str):
    from sqlalchemy import select

    from janus_batch.models import Item

    return select(Item.id).where(Item.job_id == job_id).order_by(Item.idx)


def test_a_job_whose_worker_has_storage_down_says_it_waits(client, settings_env):
    """The worker claims nothing while its storage is down (so no item is deferred yet): the
    job still says what it waits for, from the worker's presence."""
    import time

    import redis

    from janus_batch import fleet

    job = caption_job(client, n=2)
    r = redis.Redis.from_url(settings_env.redis_url)
    fleet.announce(r, settings_env.queue_prefix, "gpu0@h", ["janus.caption"])
    assert client.get(f"/v1/jobs/{job['id']}").json()["waiting"] is None
    down = time.time() - 30
    fleet.announce(
        r, settings_env.queue_prefix, "gpu0@h", ["janus.caption"], storage_down_since=down
    )
    got = client.get(f"/v1/jobs/{job['id']}").json()
    assert got["live_workers"] == 1 and got["eta_seconds"] is None
    assert got["waiting"]["reason"].startswith("storage unreachable from 1 of 1 workers")
    assert "gpu0" not in got["waiting"]["reason"]
