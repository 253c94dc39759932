"""Server-rendered dashboard pages: the job list (counts, filters, pages), a generate job's
gallery, a caption job's table, the error table, and the partials the pages poll."""

from __future__ import annotations

import html
import re

import pytest

from api.ui.format import rate
from api.ui.routes import ERROR_ITEMS, GALLERY_ITEMS, LIST_LIMIT
from janus_batch.states import ItemStatus, JobStatus
from tests.ui.helpers import ItemSpec, generated_job, insert_job


def text(page: str) -> str:
    """The visible text of an HTML page, whitespace collapsed."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.DOTALL)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def srcs(page: str) -> list[str]:
    """The src of every <img>."""
    return [html.unescape(s) for s in re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)]


def prompts(n: int) -> list[ItemSpec]:
    return [ItemSpec(input={"prompt": f"p{i}", "n": 1, "seed": i}) for i in range(n)]


def test_job_list_shows_progress_counts_and_filters(client, database_url):
    items = [
        *prompts(3),
        ItemSpec({"prompt": "x"}, status=ItemStatus.FAILED, error="boom"),
        ItemSpec({"prompt": "y"}, status=ItemStatus.PENDING),
        ItemSpec({"prompt": "z"}, status=ItemStatus.PENDING),
    ]
    running = insert_job(database_url, "generate", items, status=JobStatus.RUNNING)
    captions = [ItemSpec({"image": "s3://b/k.jpg"}, result={"caption": "a cat"})] * 2
    done = insert_job(database_url, "caption", captions)

    page = client.get("/ui")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    body = text(page.text)
    assert running.id in body and done.id in body
    assert "4 / 6 (66%) 1 failed" in body  # 3 succeeded + 1 failed of 6
    assert "2 / 2 (100%)" in body
    assert "running" in body and "succeeded" in body
    assert "/s" in body and "/min" not in body  # a rate, in items per second, for each
    assert 'class="seg seg-succeeded w50"' in page.text
    assert 'data-poll="/ui/partials/jobs"' in page.text

    only_running = text(client.get("/ui", params={"status": "running"}).text)
    assert running.id in only_running and done.id not in only_running
    only_caption = text(client.get("/ui", params={"kind": "caption", "status": ""}).text)
    assert done.id in only_caption and running.id not in only_caption
    empty = text(client.get("/ui", params={"status": "failed"}).text)
    assert "No jobs match this filter yet." in empty

    partial = client.get("/ui/partials/jobs", params={"kind": "generate"})
    assert partial.status_code == 200
    assert "<html" not in partial.text and running.id in partial.text
    assert done.id not in partial.text


def test_job_list_pages_through_many_jobs(client, database_url):
    ids = [insert_job(database_url, "caption", []).id for _ in range(LIST_LIMIT + 3)]
    first = client.get("/ui").text
    shown = set(re.findall(r"job_[0-9a-f]{24}", first))
    assert len(shown) == LIST_LIMIT
    next_url = html.unescape(re.search(r'href="([^"]+)">Next page', first).group(1))
    assert next_url.startswith("/ui?after=")
    second = client.get(next_url).text
    rest = set(re.findall(r"job_[0-9a-f]{24}", second))
    assert shown | rest == set(ids) and not shown & rest
    assert "Next page" not in second and "First page" in second
    assert client.get("/ui", params={"after": "not-a-cursor"}).status_code == 200


def test_generate_job_page_shows_gallery_with_prompt_and_seed(client, database_url, storage_root):
    job = generated_job(
        database_url,
        storage_root,
        [("night", "a lighthouse at night"), ("dunes", "dunes")],
        failed=1,
    )
    page = client.get(f"/ui/jobs/{job.id}")
    assert page.status_code == 200
    body = text(page.text)
    assert "a lighthouse at night" in body and "dunes" in body
    for seed in (1000, 1001, 1037, 1038):
        assert f"seed {seed}" in body
    images = srcs(page.text)
    assert images == [
        f"/ui/thumbs/{job.id}/images/{idx:08d}_{k}.png?size=256" for idx in (0, 1) for k in (0, 1)
    ]
    assert f'href="/v1/jobs/{job.id}/files/images/00000001_1.png"' in page.text
    for url in images:
        assert client.get(url).status_code == 200
    # counts, times, output location, links, error table, no cancel once final
    assert "Total 3" in body and "Succeeded 2" in body and "Failed 1" in body
    assert f"jobs/{job.id}" in body and "ETA done" in body
    assert 'href="http://127.0.0.1:5555/tasks"' in page.text
    assert "CUDA out of memory (simulated)" in body and "an impossible prompt 0" in body
    assert "data-cancel" not in page.text
    assert 'data-final="true"' in page.text


def test_caption_job_page_shows_captions_and_input_thumbnails(client, database_url):
    items = [
        ItemSpec(
            {"image": "file_x", "uri": "storage:inputs/local/abc/cat.png", "prompt": "?"},
            result={"caption": "A tabby cat asleep on a sofa."},
            custom_id="cat",
        ),
        ItemSpec(
            {"image": "s3://photos/dog.jpg", "uri": "s3://photos/dog.jpg", "prompt": "?"},
            result={"caption": "A dog <b>catching</b> a frisbee."},
        ),
        ItemSpec(
            {"image": "https://example.invalid/x.jpg", "prompt": "?"},
            status=ItemStatus.FAILED,
            error="cannot fetch https://example.invalid/x.jpg",
        ),
    ]
    job = insert_job(database_url, "caption", items)
    page = client.get(f"/ui/jobs/{job.id}")
    assert page.status_code == 200
    body = text(page.text)
    assert "A tabby cat asleep on a sofa." in body
    assert "A dog <b>catching</b> a frisbee." in body  # escaped, shown as text
    assert "<b>catching</b>" not in page.text
    assert srcs(page.text) == [f"/ui/inputs/{job.id}/0?size=128", f"/ui/inputs/{job.id}/1?size=128"]
    assert "cat" in body and "s3://photos/dog.jpg" in body
    assert "cannot fetch https://example.invalid/x.jpg" in body  # the error table
    assert "Gallery" not in body


def test_running_job_has_cancel_button_and_polled_summary(client, database_url):
    job = insert_job(
        database_url,
        "generate",
        [*prompts(1), ItemSpec({"prompt": "q"}, status=ItemStatus.PENDING)],
        status=JobStatus.RUNNING,
    )
    page = client.get(f"/ui/jobs/{job.id}")
    assert f'data-cancel="/v1/jobs/{job.id}/cancel"' in page.text
    assert f'data-poll="/ui/partials/jobs/{job.id}"' in page.text
    partial = client.get(f"/ui/partials/jobs/{job.id}")
    assert partial.status_code == 200 and "<html" not in partial.text
    assert 'data-final="false"' in partial.text and "Pending 1" in text(partial.text)


def test_result_and_error_tables_are_paginated(client, database_url):
    items = [*prompts(GALLERY_ITEMS + 2)]
    items += [
        ItemSpec({"prompt": f"bad {i}"}, status=ItemStatus.FAILED, error=f"error number {i}")
        for i in range(ERROR_ITEMS + 3)
    ]
    for i, item in enumerate(items[: GALLERY_ITEMS + 2]):
        item.result = {"images": [{"key": f"images/{i:08d}_0.png", "seed": 7000 + i, "index": 0}]}
    job = insert_job(database_url, "generate", items, status=JobStatus.FAILED)
    page = client.get(f"/ui/jobs/{job.id}").text
    body = text(page)
    assert f"seed {7000 + GALLERY_ITEMS - 1}" in body and f"seed {7000 + GALLERY_ITEMS}" not in body
    assert f"error number {ERROR_ITEMS - 1}" in body and f"error number {ERROR_ITEMS} " not in body
    links = [html.unescape(u) for u in re.findall(r'href="([^"]+)">Next page', page)]
    assert len(links) == 2
    more_results = text(client.get(links[0]).text)
    assert f"seed {7000 + GALLERY_ITEMS}" in more_results and "seed 7000 " not in more_results
    more_errors = text(client.get(links[1]).text)
    assert f"error number {ERROR_ITEMS + 2}" in more_errors and "error number 0 " not in more_errors
    assert "seed 7000 " in more_errors  # the results table stays on its first page


def test_unknown_job_page_is_a_readable_404(client):
    page = client.get("/ui/jobs/job_000000000000000000000000")
    assert page.status_code == 404
    assert "Job not found" in page.text
    assert client.get("/ui/jobs/nope").status_code == 404


def test_static_files_and_front_page(client):
    css = client.get("/ui/static/ui.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    assert "max-age" in css.headers["cache-control"]
    assert "fetch(" in client.get("/ui/static/ui.js").text
    assert client.get("/ui/static/../main.py").status_code == 404
    assert client.get("/ui/static/nope.css").status_code == 404
    home = client.get("/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/ui"


def test_a_job_waiting_on_storage_says_so_on_its_page(client, database_url, settings_env):
    """The job page (and the summary it polls) shows what the job waits on: its worker's
    storage down, from the worker's presence, with no ETA."""
    import time

    import redis

    from janus_batch import fleet

    job = insert_job(
        database_url,
        "generate",
        [*prompts(1), ItemSpec({"prompt": "q"}, status=ItemStatus.PENDING)],
        status=JobStatus.RUNNING,
    )
    assert "Waiting since" not in text(client.get(f"/ui/jobs/{job.id}").text)
    r = redis.Redis.from_url(settings_env.redis_url)
    fleet.announce(
        r, settings_env.queue_prefix, "gpu@h", ["janus.generate"], storage_down_since=time.time()
    )
    for url in (f"/ui/jobs/{job.id}", f"/ui/partials/jobs/{job.id}"):
        shown = text(client.get(url).text)
        assert "Waiting since" in shown and "storage unreachable from 1 of 1 workers" in shown
        assert "ETA -" in shown or "ETA —" in shown


def test_a_cancelled_job_shows_done_and_cancelled_apart(client, database_url):
    """Not "6 / 6 (100%)": cancelled items are not done."""
    items = [
        *prompts(2),
        ItemSpec({"prompt": "x"}, status=ItemStatus.FAILED, error="boom"),
        *[ItemSpec({"prompt": f"c{i}"}, status=ItemStatus.CANCELLED) for i in range(3)],
    ]
    job = insert_job(database_url, "generate", items, status=JobStatus.CANCELLED)
    listed = text(client.get("/ui").text)
    assert "3 done, 3 cancelled of 6 1 failed" in listed
    assert "6 / 6" not in listed and "(100%)" not in listed
    page = text(client.get(f"/ui/jobs/{job.id}").text)
    assert "3 done, 3 cancelled of 6" in page and "6 / 6" not in page


def test_a_cancelling_job_says_what_its_running_items_will_do(client, database_url):
    items = [
        *prompts(1),
        ItemSpec({"prompt": "r"}, status=ItemStatus.RUNNING),
        ItemSpec({"prompt": "c"}, status=ItemStatus.CANCELLED),
    ]
    job = insert_job(database_url, "generate", items, status=JobStatus.CANCELLING)
    summary = text(client.get(f"/ui/partials/jobs/{job.id}").text)
    assert "1 running item will finish or be cancelled before its next pass" in summary
    assert 'id="cancel-message"' in client.get(f"/ui/jobs/{job.id}").text


@pytest.mark.parametrize(
    ("kind", "status", "items", "message"),
    [
        ("caption", JobStatus.RUNNING, [ItemStatus.PENDING], "No captions yet."),
        (
            "caption",
            JobStatus.FAILED,
            [ItemStatus.FAILED] * 2,
            "No captions: every item failed (see the errors below).",
        ),
        (
            "generate",
            JobStatus.CANCELLED,
            [ItemStatus.CANCELLED] * 2,
            "No images: the job was cancelled before any item succeeded.",
        ),
        (
            "caption",
            JobStatus.CANCELLED,
            [ItemStatus.FAILED, ItemStatus.CANCELLED],
            "No captions: no item succeeded (the failed ones are below, the rest cancelled).",
        ),
    ],
)
def test_an_empty_result_table_says_why(client, database_url, kind, status, items, message):
    """`No captions yet` only while some may come: a finished job says why there are none."""
    specs = [
        ItemSpec(
            {"image": "s3://b/k.jpg"} if kind == "caption" else {"prompt": "p"},
            status=s,
            error="cannot fetch s3://b/k.jpg: NoSuchKey" if s == ItemStatus.FAILED else None,
        )
        for s in items
    ]
    job = insert_job(database_url, kind, specs, status=status)
    page = text(client.get(f"/ui/jobs/{job.id}").text)
    assert message in page
    if status != JobStatus.RUNNING:
        assert " yet." not in page.split("Errors")[0]


def test_rates_are_items_per_second_at_every_size():
    assert [rate(v) for v in (1234.5, 42.25, 2.5, 0.5, 0.05, 0.004, 0.0)] == [
        "1,234/s",
        "42.2/s",
        "2.50/s",
        "0.50/s",
        "0.05/s",
        "0.004/s",
        "0.00/s",
    ]
    assert rate(None) == "—"


def test_a_job_page_links_its_output_files_and_shows_images_inside_shards(
    client, database_url, storage_root
):
    """results.parquet, sidecars and output shards are linked once stored; a generated image
    kept inside a WebDataset shard is shown (and its thumbnail made) from its member alone."""
    import io
    import tarfile

    from janus_batch.models import new_id
    from tests.ui.art import paint, png

    picture = png(paint("night", 7, size=64))
    job_id = new_id("job")
    shard_key = f"jobs/{job_id}/shards/00000000-1.tar"
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info = tarfile.TarInfo("00000000_0.png")
        info.size = len(picture)
        tar.addfile(info, io.BytesIO(picture))
    (storage_root / shard_key).parent.mkdir(parents=True)
    (storage_root / shard_key).write_bytes(tar_bytes.getvalue())
    image = {"key": shard_key, "member": "00000000_0.png", "range": [512, len(picture)],
             "seed": 7, "index": 0}  # fmt: skip
    job = insert_job(
        database_url,
        "generate",
        [ItemSpec({"prompt": "a night sky", "n": 1}, result={"images": [image]})],
        job_id=job_id,
    )
    page = client.get(f"/ui/jobs/{job.id}")
    assert "results.parquet" not in page.text and "Output shards" in page.text  # not yet
    for name in ("results.parquet", "sidecars/b/00000.captions.jsonl"):
        (storage_root / job.prefix / name).parent.mkdir(parents=True, exist_ok=True)
        (storage_root / job.prefix / name).write_bytes(b"x")
    page = client.get(f"/ui/jobs/{job.id}").text
    files = f"/v1/jobs/{job.id}/files"
    for rel in ("results.parquet", "sidecars/b/00000.captions.jsonl", "shards/00000000-1.tar"):
        assert f'href="{files}/{rel}"' in page, rel
        assert client.get(f"{files}/{rel}").status_code == 200
    full = f"/ui/shard-images/{job.id}/0/0"
    assert srcs(page) == [f"{full}?size=256"] and f'href="{full}"' in page
    got = client.get(full)
    assert got.status_code == 200 and got.content == picture
    assert got.headers["content-type"] == "image/png"
    thumb = client.get(f"{full}?size=256")
    assert thumb.headers["content-type"] == "image/jpeg"
    assert thumb.headers["x-thumbnail-cache"] == "miss"
    assert client.get(f"{full}?size=256").headers["x-thumbnail-cache"] == "hit"
    assert client.get(f"/ui/shard-images/{job.id}/0/1").status_code == 404
