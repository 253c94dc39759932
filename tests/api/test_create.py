"""POST /v1/jobs: inline items are inserted and enqueued in chunks; sources enqueue one expand
message; Idempotency-Key returns the same job."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from janus_batch import jobs
from janus_batch.constants import (
    CAPTION_CHUNK_TASK,
    CAPTION_QUEUE,
    CONTROL_QUEUE,
    EXPAND_SOURCE_TASK,
    FINALIZE_JOB_TASK,
    GENERATE_QUEUE,
    LOCAL_OWNER,
)
from janus_batch.db import session_scope
from janus_batch.inputs import parse_params
from janus_batch.models import Item, Job
from janus_batch.queue import get_celery
from janus_batch.settings import DEFAULT_MAX_NEW_TOKENS, get_settings
from janus_batch.storage import storage_from_settings
from tests.api.helpers import caption_job, finish_items
from tests.services import free_port
from worker.context import Context
from worker.sweeper import reopen_windows


def _items(database_url: str, job_id: str) -> list[Item]:
    with session_scope(database_url) as session:
        return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.idx)))


def _job(database_url: str, job_id: str) -> Job:
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_caption_job_inserts_items_and_enqueues_chunks(
    client, set_env, database_url, queue_len, queue_messages
):
    settings = set_env(chunk_size="2", dispatch_window="3", model="org/some-janus")
    job = caption_job(client, n=5, params={"prompt": "What is this?", "max_new_tokens": 40})

    assert job["id"].startswith("job_")
    assert job["kind"] == "caption"
    assert job["status"] == "queued"
    assert job["model"] == settings.model == "org/some-janus"
    assert job["params"]["prompt"] == "What is this?"
    assert job["params"]["max_new_tokens"] == 40
    assert job["expanded"] is True
    assert job["counts"] == {
        "total": 5, "pending": 5, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
        "expired": 0,
    }  # fmt: skip
    assert job["output"]["prefix"].endswith(f"jobs/{job['id']}")
    assert job["output"]["results_url"].endswith(f"/v1/jobs/{job['id']}/results")

    assert queue_len(CAPTION_QUEUE) == 3  # 5 items in chunks of 2
    assert queue_len(GENERATE_QUEUE) == 0
    assert queue_len(CONTROL_QUEUE) == 0
    messages = queue_messages(CAPTION_QUEUE)
    assert {task for task, _ in messages} == {CAPTION_CHUNK_TASK}
    assert all(args[0] == job["id"] for _, args in messages)
    assert sorted(len(args[1]) for _, args in messages) == [1, 2, 2]

    rows = _items(database_url, job["id"])
    assert [r.idx for r in rows] == [0, 1, 2, 3, 4]
    assert [r.custom_id for r in rows] == ["c0", "c1", "c2", "c3", "c4"]
    assert rows[0].input == {
        "image": "s3://bucket/img0.jpg", "uri": "s3://bucket/img0.jpg", "prompt": "What is this?",
        "seed": rows[0].input["seed"],
    }  # fmt: skip
    assert all(isinstance(r.input["seed"], int) for r in rows)  # drawn (see the test below)
    assert all(r.status == "pending" for r in rows)
    stored = _job(database_url, job["id"])
    assert stored.output_prefix == f"jobs/{job['id']}"
    assert stored.owner == LOCAL_OWNER


def test_caption_length_defaults_to_the_setting(client, set_env, database_url):
    """JANUS_BATCH_MAX_NEW_TOKENS is the caption length of a job that leaves max_new_tokens
    unset, recorded in its params (what the worker and the results lines read); a job that
    gives one keeps it."""
    set_env(max_new_tokens="48")
    unset = caption_job(client, n=1, params={"prompt": "What is this?"})
    given = caption_job(client, n=1, params={"max_new_tokens": 12})

    assert unset["params"]["max_new_tokens"] == 48
    assert _job(database_url, unset["id"]).params["max_new_tokens"] == 48
    assert given["params"]["max_new_tokens"] == 12
    assert _job(database_url, given["id"]).params["max_new_tokens"] == 12


def test_parse_params_fills_only_an_unset_caption_length():
    assert parse_params("caption", None, max_n=16).max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    assert parse_params("caption", {}, max_n=16, default_max_new_tokens=300).max_new_tokens == 300
    explicit = {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
    assert (
        parse_params("caption", explicit, max_n=16, default_max_new_tokens=300).max_new_tokens
        == DEFAULT_MAX_NEW_TOKENS
    )
    generate = parse_params("generate", None, max_n=16, default_max_new_tokens=300)
    assert "max_new_tokens" not in generate.model_dump()
    assert generate.model_dump()["format"] == "png" and type(generate.format) is str


def test_caption_job_records_seeds(client, database_url):
    """A caption item's seed (given, or drawn) is recorded in its input and comes back in its
    results line, so a sampled caption can be made again by resubmitting it."""
    items = [
        {"image": "s3://bucket/a.jpg", "seed": 7},
        {"image": "s3://bucket/a.jpg", "seed": 2**63 - 1},
        {"image": "s3://bucket/b.jpg", "custom_id": "drawn"},
        "s3://bucket/c.jpg",
    ]
    body = {"kind": "caption", "params": {"temperature": 0.8}, "items": items}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = response.json()

    listed = client.get(f"/v1/jobs/{job['id']}/items").json()["data"]
    seeds = [item["input"]["seed"] for item in listed]
    assert seeds[:2] == [7, 2**63 - 1]
    assert all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds[2:])
    assert seeds[2] != seeds[3]  # drawn apart (63 random bits)
    assert [r.input["seed"] for r in _items(database_url, job["id"])] == seeds

    finish_items(database_url, job["id"], [0, 2], result={"caption": "a dog"})
    response = client.get(f"/v1/jobs/{job['id']}/results")
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [(line["idx"], line["input"]["seed"]) for line in lines] == [(0, 7), (2, seeds[2])]
    assert lines[1]["custom_id"] == "drawn" and lines[1]["caption"] == "a dog"


def test_caption_seed_bounds_match_generate(client):
    for seed in (-1, 2**63, 1.5, "seven"):
        body = {"kind": "caption", "items": [{"image": "s3://bucket/a.jpg", "seed": seed}]}
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 422, (seed, response.text)
        assert response.json()["error"]["field"] == "items[0].seed"


def test_generate_job_records_seeds_and_item_overrides(client, database_url, queue_len):
    body = {
        "kind": "generate",
        "params": {"n": 2, "cfg_weight": 4.0, "format": "webp"},
        "items": [
            {"prompt": "a red fox", "seed": 7, "custom_id": "fox"},
            {"prompt": "a blue whale", "n": 1, "temperature": 0.5},
            "a bare prompt string",
        ],
    }
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["params"]["format"] == "webp"
    assert queue_len(GENERATE_QUEUE) == 1
    assert queue_len(CAPTION_QUEUE) == 0

    fox, whale, bare = (r.input for r in _items(database_url, job["id"]))
    assert fox["seed"] == 7 and fox["n"] == 2 and fox["cfg_weight"] == 4.0
    assert whale["n"] == 1 and whale["temperature"] == 0.5
    assert isinstance(whale["seed"], int) and 0 <= whale["seed"] < 2**63
    assert isinstance(bare["seed"], int) and bare["prompt"] == "a bare prompt string"


def test_source_jobs_enqueue_one_expand_message(client, database_url, queue_len, queue_messages):
    prefix_job = client.post(
        "/v1/jobs", json={"kind": "caption", "source": {"s3_prefix": "s3://photos/2024/"}}
    )
    assert prefix_job.status_code == 202, prefix_job.text
    job = prefix_job.json()
    assert job["expanded"] is False
    assert job["source"] == {"s3_prefix": "s3://photos/2024/"}
    assert job["counts"]["total"] == 0
    assert job["eta_seconds"] is None
    assert queue_len(CONTROL_QUEUE) == 1
    assert queue_len(CAPTION_QUEUE) == 0
    assert queue_messages(CONTROL_QUEUE) == [(EXPAND_SOURCE_TASK, [job["id"]])]
    assert _items(database_url, job["id"]) == []
    assert _job(database_url, job["id"]).expanded is False

    manifest_job = client.post(
        "/v1/jobs",
        json={"kind": "generate", "source": {"manifest": "https://example.com/prompts.jsonl"}},
    )
    assert manifest_job.status_code == 202, manifest_job.text
    assert manifest_job.json()["source"] == {"manifest": "https://example.com/prompts.jsonl"}
    assert queue_len(CONTROL_QUEUE) == 2
    assert queue_len(GENERATE_QUEUE) == 0


def test_manifest_file_id_is_resolved_to_storage_key(client, database_url, queue_len):
    upload = client.post(
        "/v1/files",
        files={"file": ("prompts.jsonl", b'{"prompt": "a cat"}\n"a dog"\n')},
        data={"purpose": "manifest"},
    )
    assert upload.status_code == 201, upload.text
    file_id = upload.json()["id"]
    response = client.post("/v1/jobs", json={"kind": "generate", "source": {"manifest": file_id}})
    assert response.status_code == 202, response.text
    source = response.json()["source"]
    assert source["file_id"] == file_id
    assert source["manifest"].startswith("storage:inputs/local/")
    assert source["manifest"].endswith("/prompts.jsonl")
    assert queue_len(CONTROL_QUEUE) == 1


def test_uploaded_image_id_in_caption_item(client, database_url):
    upload = client.post(
        "/v1/files", files={"file": ("cat.png", b"\x89PNG not really")}, data={"purpose": "image"}
    )
    file_id = upload.json()["id"]
    job = client.post("/v1/jobs", json={"kind": "caption", "items": [{"image": file_id}]}).json()
    (row,) = _items(database_url, job["id"])
    assert row.input["image"] == file_id
    assert row.input["uri"].startswith("storage:inputs/local/")


def test_idempotency_key_returns_the_same_job(client, database_url, queue_len):
    body = {"kind": "caption", "items": [{"image": "s3://b/a.jpg"}]}
    headers = {"Idempotency-Key": "run-42"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    second = client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert queue_len(CAPTION_QUEUE) == 1  # nothing enqueued the second time
    other = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "run-43"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert client.get("/v1/jobs").json()["data"].__len__() == 2


def test_idempotency_race_creates_one_job(client, database_url, queue_len):
    body = {"kind": "generate", "items": ["a lighthouse"]}

    def submit(_: int) -> tuple[int, str]:
        r = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "same"})
        return r.status_code, r.json()["id"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(submit, range(6)))
    assert len({job_id for _, job_id in results}) == 1
    assert sorted(code for code, _ in results).count(202) == 1
    assert queue_len(GENERATE_QUEUE) == 1
    assert client.get("/v1/jobs").json()["data"].__len__() == 1


def test_idempotency_unique_constraint_race(client, monkeypatch, queue_len):
    """Two requests both miss the pre-check; the loser's INSERT hits the unique constraint
    and it answers with the winner's job."""
    body = {"kind": "caption", "items": [{"image": "s3://b/a.jpg"}]}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"}).json()
    real = jobs._find_idempotent
    calls = []

    def miss_once(*args):
        calls.append(args)
        return None if len(calls) == 1 else real(*args)

    monkeypatch.setattr(jobs, "_find_idempotent", miss_once)
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert len(calls) == 2
    assert queue_len(CAPTION_QUEUE) == 1


def test_queue_down_accepts_inline_items_and_the_sweeper_dispatches_them(
    client, set_env, database_url, queue_len
):
    """Inline items are committed with their job: with Redis down the job is accepted, its
    items wait undispatched, and the first sweep after Redis answers sends them."""
    redis_url = get_settings().redis_url
    set_env(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    get_celery.cache_clear()
    body = {"kind": "caption", "items": [{"image": "s3://b/a.jpg"}, {"image": "s3://b/c.jpg"}]}
    response = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    with session_scope(database_url) as session:
        items = session.scalars(select(Item).where(Item.job_id == job_id)).all()
    assert len(items) == 2 and all(i.enqueued_at is None for i in items)

    set_env(redis_url=redis_url)  # Redis answers again
    get_celery.cache_clear()
    settings = get_settings()
    ctx = Context(settings, storage_from_settings(settings), get_celery())
    assert reopen_windows(ctx) == 1
    assert queue_len(CAPTION_QUEUE) == 1


def test_queue_down_accepts_a_source_job_and_the_sweeper_expands_it(
    client, set_env, database_url, queue_messages
):
    """The job row is the truth: with Redis down a source job is accepted (never a 503 for a
    job that exists); its expand message, lost, is re-sent by the sweeper once Redis answers
    and the job has been idle stale_pending_seconds."""
    from datetime import timedelta

    from janus_batch.models import utcnow
    from worker.sweeper import resend_expand

    redis_url = get_settings().redis_url
    set_env(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    get_celery.cache_clear()
    response = client.post(
        "/v1/jobs",
        json={"kind": "caption", "source": {"s3_prefix": "s3://b/photos/"}},
        headers={"Idempotency-Key": "k"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["status"] == "queued" and not response.json()["expanded"]

    set_env(redis_url=redis_url)
    get_celery.cache_clear()
    settings = get_settings()
    ctx = Context(settings, storage_from_settings(settings), get_celery())
    later = utcnow() + timedelta(seconds=settings.stale_pending_seconds + 1)
    assert resend_expand(ctx, later) == 1
    assert queue_messages(CONTROL_QUEUE) == [(EXPAND_SOURCE_TASK, [job_id])]


def test_idempotency_key_replayed_with_another_body_is_refused(client):
    body = {"kind": "generate", "items": ["a fox"]}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "same"})
    assert first.status_code == 202
    replay = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "same"})
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    other = client.post(
        "/v1/jobs",
        json={"kind": "generate", "items": ["a boat"]},
        headers={"Idempotency-Key": "same"},
    )
    assert other.status_code == 422, other.text
    error = other.json()["error"]
    assert error["field"] == "Idempotency-Key" and first.json()["id"] in error["message"]


def test_priority_is_recorded_and_bounded(client):
    job = client.post(
        "/v1/jobs", json={"kind": "generate", "priority": 7, "items": ["a fox"]}
    ).json()
    assert job["priority"] == 7
    assert client.get(f"/v1/jobs/{job['id']}").json()["priority"] == 7
    assert (
        client.post("/v1/jobs", json={"kind": "generate", "items": ["a"]}).json()["priority"] == 0
    )
    refused = client.post("/v1/jobs", json={"kind": "generate", "priority": 101, "items": ["a"]})
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "priority"


def test_an_input_the_client_could_not_send_is_a_failed_item(client, database_url, queue_messages):
    """`{custom_id, error}` items (an empty file the CLI drops) are born failed, never run,
    and named by their custom id; the others run as usual."""
    items = [
        {"image": "s3://bucket/a.jpg", "custom_id": "a.jpg"},
        {"custom_id": "sub/empty.jpg", "error": "empty file (0 bytes)"},
    ]
    job = client.post("/v1/jobs", json={"kind": "caption", "items": items}).json()
    assert (job["counts"]["total"], job["counts"]["pending"], job["counts"]["failed"]) == (2, 1, 1)
    [(_, args)] = queue_messages(CAPTION_QUEUE)
    rows = _items(database_url, job["id"])
    assert args[1] == [rows[0].id]  # only the sent image is enqueued
    assert (rows[1].custom_id, rows[1].status, rows[1].input, rows[1].attempts) == (
        "sub/empty.jpg",
        "failed",
        {},
        0,
    )
    assert rows[1].error == "not sent by the client: empty file (0 bytes)"
    [shown] = client.get(f"/v1/jobs/{job['id']}/items?status=failed").json()["data"]
    assert shown["error_class"] == "input"  # never retried

    only = client.post(
        "/v1/jobs", json={"kind": "generate", "items": [{"custom_id": "3", "error": "unreadable"}]}
    ).json()
    assert only["counts"]["failed"] == 1
    assert (EXPAND_SOURCE_TASK, [only["id"]]) not in queue_messages(CONTROL_QUEUE)
    assert (FINALIZE_JOB_TASK, [only["id"]]) in queue_messages(CONTROL_QUEUE)


def test_a_not_sent_item_takes_only_custom_id_and_error(client):
    cases = [
        ({"image": "s3://bucket/a.jpg", "custom_id": "a", "error": "x"}, "items[0].image"),
        ({"error": "empty file"}, "items[0].custom_id"),
        ({"custom_id": "a", "error": ""}, "items[0].error"),
        ({"custom_id": "a", "error": "x" * 501}, "items[0].error"),
    ]
    for item, field in cases:
        response = client.post("/v1/jobs", json={"kind": "caption", "items": [item]})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field
