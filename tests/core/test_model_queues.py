"""Queue names of several models in one fleet: each model's chunks go to its own queues of
each kind (the plain ones for the default model), under names Redis and kombu take as they
are; a worker started with the plain kind queues consumes its own model's instead."""

from __future__ import annotations

import base64
import json
import re

import redis

from janus_batch.queue import (
    chunk_queue,
    chunk_queues,
    chunk_task_name,
    is_chunk_queue,
    make_celery,
    model_slug,
    send_chunk,
)
from janus_batch.settings import Settings

SAFE = re.compile(r"[a-z0-9-]+")


def test_a_models_slug_is_safe_short_and_its_own() -> None:
    names = [
        "deepseek-community/Janus-Pro-7B",
        "deepseek-community/janus-pro-7b",  # differs by case only
        "deepseek-community_janus-pro-7b",  # the same letters and digits
        "/models/cache/" + "x" * 300 + "/Janus Pro 1B (converted)",
        "janus-pro-1b",
        "模型",  # nothing of it is ASCII
    ]
    slugs = [model_slug(name) for name in names]
    assert all(SAFE.fullmatch(slug) and len(slug) <= 49 for slug in slugs), slugs
    assert len(set(slugs)) == len(names)  # the hash keeps look-alike names apart
    assert slugs[0].startswith("deepseek-community-janus-pro-7b-")
    assert slugs[3][:-9].endswith("-janus-pro-1b-converted")  # a long path keeps its end
    assert slugs[5].startswith("model-")
    assert model_slug(names[0]) == slugs[0]  # stable: API and workers agree


def test_the_default_model_keeps_the_plain_queues_and_others_get_their_own() -> None:
    assert chunk_queue("caption", "tiny-a", "tiny-a") == "janus.caption"
    assert chunk_queue("generate", "tiny-a", "tiny-a") == "janus.generate"
    assert chunk_queue("caption", "tiny-b", "tiny-a") == f"janus.caption.{model_slug('tiny-b')}"
    assert chunk_queues(["tiny-b"], "tiny-a") == [
        "janus.caption",
        f"janus.caption.{model_slug('tiny-b')}",
        "janus.generate",
        f"janus.generate.{model_slug('tiny-b')}",
    ]
    assert all(is_chunk_queue(q) for q in chunk_queues(["tiny-b"], "tiny-a"))
    assert not is_chunk_queue("janus.control") and not is_chunk_queue("janus.captions")


def test_chunks_go_to_their_models_queue_named_after_it_in_flower(
    settings_env: Settings, redis_url: str, queue_prefix: str
) -> None:
    settings = settings_env.model_copy(update={"default_model": "tiny-a"})
    app = make_celery(settings)
    send_chunk(app, "caption", "job_a", [1, 2])  # no model: the default
    send_chunk(app, "caption", "job_b", [3], label="nightly", model="tiny-b")
    send_chunk(app, "generate", "job_c", [4], model="tiny-a")
    conn = redis.Redis.from_url(redis_url)
    try:
        queues = {
            q: [json.loads(m) for m in conn.lrange(queue_prefix + q, 0, -1)]
            for q in chunk_queues(["tiny-b"], "tiny-a")
        }
    finally:
        conn.close()
    seen = {
        q: [(json.loads(base64.b64decode(m["body"]))[0], m["headers"].get("shadow")) for m in ms]
        for q, ms in queues.items()
    }
    slug = model_slug("tiny-b")
    assert seen == {
        "janus.caption": [(["job_a", [1, 2]], None)],
        f"janus.caption.{slug}": [(["job_b", [3]], "janus.caption_chunk [tiny-b] nightly")],
        "janus.generate": [(["job_c", [4]], None)],
        f"janus.generate.{slug}": [],
    }
    assert chunk_task_name("generate", None, "tiny-b") == "janus.generate_chunk [tiny-b]"


def test_a_worker_started_on_the_plain_queues_consumes_its_models_own() -> None:
    from worker.app import consumes_model_queues, serve_own_queues

    def consumed(queues: list[str] | None, **values: str) -> list[str]:
        settings = Settings(**values)  # type: ignore[arg-type]
        app = make_celery(settings)
        if queues is not None:  # -Q; without it a worker consumes every queue of the app
            app.amqp.queues.select(queues)
        return serve_own_queues(app.amqp.queues, settings)

    slug = model_slug("tiny-b")
    plain = ["janus.caption", "janus.generate", "janus.control"]
    assert consumed(plain, model="/m/a", default_model="/m/a") == sorted(plain)
    assert consumed(plain, model="/m/a") == sorted(plain)  # one model: as it always was
    mine = consumed(plain, model="/m/b", model_name="tiny-b", default_model="/m/a")
    assert mine == ["janus.caption." + slug, "janus.control", "janus.generate." + slug]
    assert consumed(["janus.generate"], model="/m/b", model_name="tiny-b", default_model="x") == [
        "janus.generate." + slug
    ]
    assert consumed(["janus.control"], model="/m/b", model_name="tiny-b") == ["janus.control"]
    everything = consumed(None, model="/m/b", model_name="tiny-b", default_model="/m/a")
    assert everything == mine
    assert consumes_model_queues(mine) and not consumes_model_queues(["janus.control"])
