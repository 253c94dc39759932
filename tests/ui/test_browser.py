"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a real
uvicorn server: every gallery thumbnail renders, prompts and seeds are visible, the job list
refreshes itself, and the cancel button works. Screenshots go to $JB_SCREENSHOT_DIR (or the
test's tmp folder). Chromium missing is a failure, not a skip: CI installs it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from api.ui.routes import ASSET_VERSION
from janus_batch.migrate import upgrade
from janus_batch.ops.stack import api_command, free_port, spawn, wait_http
from janus_batch.states import ItemStatus, JobStatus
from tests.ui.art import SCENES, paint, png
from tests.ui.helpers import ItemSpec, generated_job, insert_job

CHROMIUM = os.environ.get("JB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ALL_IMAGES_LOADED = "() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
"""A function, not an expression: Playwright polls an expression with eval, which the
dashboard's Content-Security-Policy (no 'unsafe-eval') refuses."""


@dataclass
class Server:
    """A running API with its database and storage folder."""

    url: str
    db: str
    storage: Path


@pytest.fixture
def server(tmp_path: Path, redis_url: str, queue_prefix: str) -> Iterator[Server]:
    """uvicorn serving the API (open mode) on a free port, on a fresh SQLite database."""
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(db)
    storage = tmp_path / "results"
    storage.mkdir()
    env = {
        **os.environ,
        "JANUS_BATCH_DATA_DIR": str(tmp_path / "data"),
        "JANUS_BATCH_DATABASE_URL": db,
        "JANUS_BATCH_STORAGE_URL": str(storage),
        "JANUS_BATCH_REDIS_URL": redis_url,
        "JANUS_BATCH_QUEUE_PREFIX": queue_prefix,
        "JANUS_BATCH_AUTH_MODE": "open",
        "JANUS_BATCH_FLOWER_URL": "http://127.0.0.1:5555",
    }
    port = free_port()
    child = spawn("api", api_command(port), env, tmp_path / "logs")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", child)
        yield Server(url, db, storage)
    finally:
        child.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless; fails (never skips) when it is not installed."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A desktop-sized tab that records script errors and anything the page's
    Content-Security-Policy blocked (the test fails on any)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    yield tab
    context.close()
    assert errors == [], errors


def shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("JB_SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_gallery_renders_every_thumbnail(server: Server, page: Page, tmp_path: Path):
    job = generated_job(server.db, server.storage, n=2, failed=1)
    response = page.goto(f"{server.url}/ui/jobs/{job.id}")
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator("h1")).to_contain_text(job.id)
    tiles = page.locator(".gallery img")
    expect(tiles).to_have_count(2 * len(SCENES))
    for tile in tiles.all():  # lazy images load once near the viewport
        tile.scroll_into_view_if_needed()
    page.wait_for_function(ALL_IMAGES_LOADED, timeout=20_000)
    images = page.evaluate(
        "Array.from(document.images).map(i => ({src: i.currentSrc, w: i.naturalWidth,"
        " h: i.naturalHeight, broken: i.dataset.broken || null}))"
    )
    assert len(images) == 2 * len(SCENES)
    for image in images:
        assert image["broken"] is None and "/ui/thumbs/" in image["src"], image
        assert 0 < image["w"] <= 256 and 0 < image["h"] <= 256, image

    for text, _ in SCENES.values():
        expect(page.get_by_text(text, exact=True).first).to_be_visible()
    for seed in (1000, 1001, 1000 + 37 * 5 + 1):
        expect(page.get_by_text(f"seed {seed}", exact=True)).to_be_visible()
    expect(page.locator("#errors")).to_contain_text("CUDA out of memory (simulated)")
    expect(page.locator("#summary")).to_contain_text("succeeded")
    assert page.locator("button[data-cancel]").count() == 0

    link = page.locator(".gallery a").first.get_attribute("href")
    full = page.request.get(f"{server.url}{link}")
    assert full.ok and full.headers["content-type"] == "image/png"

    page.evaluate("window.scrollTo(0, 0)")
    path = shots_dir(tmp_path) / "gallery.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def test_job_list_updates_live_and_cancel_works(server: Server, page: Page, tmp_path: Path):
    pending = [ItemSpec({"prompt": f"p{i}"}, status=ItemStatus.PENDING) for i in range(3)]
    running = insert_job(
        server.db, "generate", [ItemSpec({"prompt": "done"}), *pending], status=JobStatus.RUNNING
    )
    page.goto(f"{server.url}/ui")
    row = page.locator(f"#row-{running.id}")
    expect(row).to_contain_text("1 / 4")
    expect(row).to_contain_text("running")

    later = generated_job(server.db, server.storage, [("balloon", "a balloon")], n=1)
    expect(page.locator(f"#row-{later.id}")).to_be_visible(timeout=10_000)  # no reload
    page.screenshot(path=str(shots_dir(tmp_path) / "jobs.png"))

    page.goto(f"{server.url}/ui/jobs/{running.id}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("button[data-cancel]").click()
    summary = page.locator("#summary")
    expect(page.locator("#cancel-message")).to_have_text(
        "3 pending items cancelled; 1 succeeded and 0 failed kept."
    )
    expect(summary.locator("dd.count-cancelled")).to_have_text("3", timeout=10_000)
    expect(summary.locator(".badge")).to_have_text("finalizing")  # no worker runs finalize
    expect(page.locator("button[data-cancel]")).to_have_count(0)
    expect(summary.locator(".counts-line")).to_contain_text("1 done, 3 cancelled of 4")
    expect(page.locator("#cancel-message")).to_be_visible()  # outlives the summary's refresh


def test_cancel_says_running_items_finish_or_are_cancelled(
    server: Server, page: Page, tmp_path: Path
):
    items = [
        ItemSpec({"prompt": "done"}),
        ItemSpec({"prompt": "busy"}, status=ItemStatus.RUNNING),
        ItemSpec({"prompt": "waiting"}, status=ItemStatus.PENDING),
    ]
    job = insert_job(server.db, "generate", items, status=JobStatus.RUNNING)
    page.goto(f"{server.url}/ui/jobs/{job.id}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("button[data-cancel]").click()
    expect(page.locator("#cancel-message")).to_have_text(
        "1 pending items cancelled; 1 running items will finish or be cancelled before their "
        "next pass; 1 succeeded and 0 failed kept."
    )
    summary = page.locator("#summary")
    expect(summary.locator(".badge")).to_have_text("cancelling", timeout=10_000)
    expect(summary).to_contain_text(
        "1 running item will finish or be cancelled before its next pass"
    )


OVERFLOW = """() => {
  const out = [];
  for (const tile of document.querySelectorAll('.gallery .tile')) {
    const box = tile.getBoundingClientRect();
    for (const el of tile.querySelectorAll('.meta span')) {
      const r = el.getBoundingClientRect();
      const out_of_tile = r.right > box.right + 0.5 || r.left < box.left - 0.5;
      if (out_of_tile || el.scrollWidth > el.clientWidth + 1)
        out.push(el.textContent.trim());
    }
  }
  return out;
}"""
"""The gallery tiles' seed and item-number texts that stick out of their tile (clipped)."""


def test_gallery_numbers_and_long_seeds_are_never_clipped(
    server: Server, page: Page, tmp_path: Path
):
    job_id = "job_" + "0" * 24
    items = []
    for idx in range(12):
        key = f"jobs/{job_id}/images/{idx:08d}_0.png"
        (server.storage / key).parent.mkdir(parents=True, exist_ok=True)
        (server.storage / key).write_bytes(png(paint("dunes", idx, size=64)))
        seed = 9_223_372_036_854_775_807 - idx  # 19 digits
        image = {"key": key, "seed": seed, "index": 0}
        items.append(ItemSpec({"prompt": f"dunes {idx}"}, result={"images": [image]}))
    insert_job(server.db, "generate", items, job_id=job_id)
    for width in (1280, 420):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(f"{server.url}/ui/jobs/{job_id}")
        for idx in (10, 11):
            number = page.locator(".gallery .item-no", has_text=f"#{idx}")
            expect(number).to_have_text(f"#{idx}")
            expect(number).to_be_visible()
        expect(page.get_by_text("seed 9223372036854775797")).to_be_visible()
        assert page.evaluate(OVERFLOW) == [], width
    page.screenshot(path=str(shots_dir(tmp_path) / "gallery-narrow.png"), full_page=True)


def test_a_long_caption_token_wraps_inside_the_table(server: Server, page: Page, tmp_path: Path):
    token = "https://example.com/" + "x" * 400
    items = [
        ItemSpec({"image": "https://127.0.0.1:9/a.jpg"}, result={"caption": f"See {token}"}),
        ItemSpec(
            {"image": "https://127.0.0.1:9/b.jpg"},
            status=ItemStatus.FAILED,
            error="cannot fetch " + token,
        ),
    ]
    job = insert_job(server.db, "caption", items)
    page.goto(f"{server.url}/ui/jobs/{job.id}")
    expect(page.locator("table.captions")).to_contain_text("xxxxxxxx")
    widths = page.evaluate(
        "() => ({page: document.documentElement.scrollWidth, view: window.innerWidth,"
        " tables: Array.from(document.querySelectorAll('table')).map(t =>"
        " [t.getBoundingClientRect().right, t.parentElement.getBoundingClientRect().right])})"
    )
    assert widths["page"] <= widths["view"], widths
    for right, parent in widths["tables"]:
        assert right <= parent + 0.5, widths


def test_caption_table_shows_inputs_and_a_placeholder(server: Server, page: Page, tmp_path: Path):
    captions = {
        "mountains": "Layered purple mountains under a pink sky with a pale sun.",
        "lake": "Pine trees line the shore of a still lake at dawn.",
        "balloon": "A striped hot-air balloon floats above green hills.",
    }
    items = []
    for i, (scene, caption) in enumerate(captions.items()):
        key = f"inputs/local/{i:064x}/{scene}.png"
        (server.storage / key).parent.mkdir(parents=True)
        (server.storage / key).write_bytes(png(paint(scene, 10 + i, size=640)))
        items.append(
            ItemSpec(
                {"image": f"file_{i:024x}", "uri": f"storage:{key}"},
                result={"caption": caption},
                custom_id=f"{scene}.png",
            )
        )
    gone = "https://127.0.0.1:9/gone.jpg"  # nothing listens there: no preview
    items.append(ItemSpec({"image": gone, "uri": gone}, result={"caption": "An old photo."}))
    items.append(
        ItemSpec(
            {"image": "s3://photos/missing.jpg"},
            status=ItemStatus.FAILED,
            error="cannot fetch s3://photos/missing.jpg: NoSuchKey",
        )
    )
    job = insert_job(server.db, "caption", items)

    page.goto(f"{server.url}/ui/jobs/{job.id}")
    page.wait_for_function(ALL_IMAGES_LOADED, timeout=20_000)
    images = page.evaluate(
        "Array.from(document.querySelectorAll('table.captions img')).map(i => "
        "({w: i.naturalWidth, broken: i.dataset.broken || null, src: i.currentSrc}))"
    )
    assert [i["broken"] for i in images] == [None, None, None, "1"], images
    assert all(i["w"] > 0 for i in images)
    assert images[3]["src"].endswith(f"missing.svg?v={ASSET_VERSION}")
    for caption in captions.values():
        expect(page.get_by_text(caption)).to_be_visible()
    expect(page.locator("#errors")).to_contain_text("NoSuchKey")
    page.screenshot(path=str(shots_dir(tmp_path) / "captions.png"), full_page=True)
