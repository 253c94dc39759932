"""The CLI's flows end to end: real commands against a running API and Celery worker on the
tiny checkpoint (one stack for the module)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from janus_batch.client.http import Client, sha256_file
from tests.cli.conftest import Cli, Run, Stack, draw_images

TIMEOUT = "120"
PROMPTS = "a red fox in snow\n\na lighthouse in a storm\n  a bowl of ramen  \n"


def one_error_line(run: Run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    return lines[0]


@pytest.fixture(scope="module")
def api(stack: Stack) -> Any:
    with Client(stack.api_url) as client:
        yield client


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_images(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def caption_run(cli: Cli, photos: Path) -> Run:
    """`caption FOLDER --wait` on 3 images + 1 corrupt one."""
    return cli(
        "caption",
        photos,
        "--prompt",
        "Describe this image in one sentence.",
        "--max-new-tokens",
        "8",
        "--wait",
        "--interval",
        "0.2",
        "--timeout",
        TIMEOUT,
    )


@pytest.fixture(scope="module")
def generate_run(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """`generate prompts.txt --n 2 --seed 7 --wait` on 3 prompts (line 2 blank)."""
    prompts = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    prompts.write_text(PROMPTS)
    return cli(
        "generate",
        prompts,
        "--n",
        "2",
        "--seed",
        "7",
        "--cfg",
        "3",
        "--format",
        "png",
        "--wait",
        "--interval",
        "0.2",
        "--timeout",
        TIMEOUT,
    )


def test_caption_folder_waits_and_exits_1_when_an_item_fails(caption_run: Run, api: Client) -> None:
    assert caption_run.exit_code == 1, caption_run.stderr
    job = api.get_job(caption_run.job_id)
    assert job["status"] == "succeeded"
    assert job["counts"]["total"] == 4
    assert (job["counts"]["succeeded"], job["counts"]["failed"]) == (3, 1)
    assert job["params"]["max_new_tokens"] == 8
    assert "uploaded 4 new" in caption_run.stderr
    assert "3/4 succeeded, 1 failed" in caption_run.stderr
    items = api.items(caption_run.job_id)["data"]
    assert sorted(i["custom_id"] for i in items) == [
        "blue.jpg",
        "broken.png",
        "red.png",
        "sub/green.webp",
    ]
    assert all(i["input"]["image"].startswith("file_") for i in items)


def test_caption_again_uploads_nothing(
    cli: Cli, caption_run: Run, photos: Path, api: Client
) -> None:
    again = cli("caption", photos, "--max-new-tokens", "4")
    assert again.exit_code == 0, again.stderr
    assert "uploaded 0 new (0 B), 4 already on the server" in again.stderr
    assert again.job_id != caption_run.job_id
    first = {i["custom_id"]: i["input"]["image"] for i in api.items(caption_run.job_id)["data"]}
    second = {i["custom_id"]: i["input"]["image"] for i in api.items(again.job_id)["data"]}
    assert first == second
    for rel, file_id in first.items():
        assert api.find_file(sha256_file(photos / rel), "image")["id"] == file_id


def test_caption_again_with_resume_sends_only_what_has_no_caption(
    cli: Cli, caption_run: Run, photos: Path, api: Client
) -> None:
    """--resume JOB submits only the images without a caption in JOB (the corrupt one)."""
    again = cli("caption", photos, "--max-new-tokens", "4", "--resume", caption_run.job_id)
    assert again.exit_code == 0, again.stderr
    said = " ".join(again.stderr.split())
    assert "3 of 4 images already captioned there; 1 image to submit" in said
    assert [i["custom_id"] for i in api.items(again.job_id)["data"]] == ["broken.png"]


def test_a_refused_line_is_named_and_skip_invalid_records_it(
    cli: Cli, api: Client, tmp_path: Path
) -> None:
    """One over-long prompt: the file is refused naming its line (not items[i]); with
    --skip-invalid the job is made and that line is a failed item, the rest generated;
    --resume of that job then sends only the failed line."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n\n" + "x" * 5000 + "\na boat\n")
    refused = cli("generate", prompts)
    said = " ".join(refused.stderr.split())
    assert refused.exit_code == 4 and f"{prompts} line 3:" in said and "items[" not in said
    run = cli(
        "generate", prompts, "--skip-invalid", "--wait", "--interval", "0.2", "--timeout", TIMEOUT
    )
    assert run.exit_code == 1, run.stderr  # one item failed
    job = api.get_job(run.job_id)
    assert (job["counts"]["succeeded"], job["counts"]["failed"]) == (2, 1)
    [bad] = api.items(run.job_id, status="failed")["data"]
    assert "4000" in bad["error"] or "characters" in bad["error"]
    assert bad["custom_id"] == "3"  # its line number, as errors.jsonl names it
    resumed = cli("generate", prompts, "--resume", run.job_id, "--skip-invalid")
    assert "2 of 3 items already have a result there; 1 item to submit" in " ".join(
        resumed.stderr.split()
    )


@pytest.mark.parametrize("inline_limit", ["100", "1"], ids=["inline", "manifest"])
def test_files_the_client_drops_are_failed_items_of_the_job(
    cli: Cli, api: Client, tmp_path: Path, inline_limit: str
) -> None:
    """An empty image file and a broken link are the user's inputs the client cannot send:
    printed, and recorded as failed items named by their path (errors.jsonl complete),
    whether the items go inline or as a manifest; notes.txt and .DS_Store are no inputs."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").save(folder / "red.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "sub" / "gone.png").symlink_to(folder / "nowhere.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    run = cli(
        "caption", folder, "--max-new-tokens", "4", "--inline-limit", inline_limit,
        "--wait", "--interval", "0.2", "--timeout", TIMEOUT,
    )  # fmt: skip
    assert run.exit_code == 1, run.stderr  # two items failed
    said = " ".join(run.stderr.split())
    assert "not sent empty.jpg: empty file (0 bytes) (recorded as a failed item)" in said
    assert "not sent sub/gone.png: broken symbolic link (recorded as a failed item)" in said
    assert f"(1 image from {folder}, 2 not sent)" in said
    job = api.get_job(run.job_id)
    assert (job["counts"]["succeeded"], job["counts"]["failed"]) == (1, 2)
    items = api.items(run.job_id)["data"]
    assert [(i["custom_id"], i["status"], i["error"]) for i in items] == [
        ("empty.jpg", "failed", "not sent by the client: empty file (0 bytes)"),
        ("red.png", "succeeded", None),
        ("sub/gone.png", "failed", "not sent by the client: broken symbolic link"),
    ]
    out = tmp_path / "out"
    got = cli("results", run.job_id, "--out", out, "--errors")
    assert got.exit_code == 0, got.stderr
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["custom_id"], e["error"]) for e in errors] == [
        ("empty.jpg", "not sent by the client: empty file (0 bytes)"),
        ("sub/gone.png", "not sent by the client: broken symbolic link"),
    ]


def test_a_folder_of_only_empty_images_submits_nothing(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    run = cli("caption", tmp_path)
    assert run.exit_code == 4 and run.stdout == ""
    said = " ".join(run.stderr.split())
    assert "not sent a.png: empty file (0 bytes)" in said
    assert "error: no image could be uploaded" in said


def test_generate_with_seed_exits_0_and_records_seeds(generate_run: Run, api: Client) -> None:
    assert generate_run.exit_code == 0, generate_run.stderr
    job = api.get_job(generate_run.job_id)
    assert job["status"] == "succeeded"
    assert job["params"]["n"] == 2 and job["params"]["cfg_weight"] == 3.0
    items = api.items(generate_run.job_id)["data"]
    assert [(i["custom_id"], i["input"]["prompt"], i["input"]["seed"]) for i in items] == [
        ("1", "a red fox in snow", 7),
        ("3", "a lighthouse in a storm", 8),
        ("4", "a bowl of ramen", 9),
    ]
    assert all(len(i["result"]["images"]) == 2 for i in items)


def test_results_of_a_generate_job_with_sidecars_resume(
    cli: Cli, generate_run: Run, tmp_path: Path
) -> None:
    job_id = generate_run.job_id
    first = cli("results", job_id, "--out", tmp_path, "--sidecars")
    assert first.exit_code == 0, first.stderr
    assert "images/: 6 downloaded, 0 already present" in first.stderr
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    images = sorted((tmp_path / "images").glob("*.png"))
    assert len(images) == 6
    for line in lines:
        for entry in line["images"]:
            path = tmp_path / "images" / Path(entry["key"]).name
            with Image.open(path) as im:
                assert im.size == (64, 64)
                im.load()
            assert path.with_suffix(".txt").read_text() == line["input"]["prompt"]
    with (tmp_path / "images.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    assert {(r["custom_id"], r["prompt"]) for r in rows} == {
        ("1", "a red fox in snow"),
        ("3", "a lighthouse in a storm"),
        ("4", "a bowl of ramen"),
    }
    stamps = {p: p.stat().st_mtime_ns for p in images}

    second = cli("results", job_id, "--out", tmp_path, "--sidecars")
    assert second.exit_code == 0, second.stderr
    assert "images/: 0 downloaded, 6 already present" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in images} == stamps


def test_generate_into_shards_and_download_them(
    cli: Cli, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """`generate --shards 4` (n=2: two prompts a shard), then `results --sidecars`: each
    shard downloaded once, named in images.csv, unpacked next to its prompts."""
    prompts = tmp_path_factory.mktemp("shard-prompts") / "prompts.txt"
    prompts.write_text(PROMPTS)
    run = cli("generate", prompts, "--n", "2", "--seed", "3", "--shards", "4", "--wait")
    assert run.exit_code == 0, run.stderr
    got = cli("results", run.job_id, "--out", tmp_path, "--sidecars")
    assert got.exit_code == 0, got.stderr
    assert "shards/: 2 downloaded, 0 already present" in got.stderr
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "00000000-1.tar",
        "00000002-1.tar",
    ]
    with (tmp_path / "images.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows][:3] == [
        "shards/00000000-1.tar#00000000_0.png",
        "shards/00000000-1.tar#00000000_1.png",
        "shards/00000000-1.tar#00000001_0.png",
    ]
    for row in rows:
        image = tmp_path / "images" / row["image"].split("#")[1]
        with Image.open(image) as im:
            assert im.size == (64, 64)
        assert image.with_suffix(".txt").read_text() == row["prompt"]
    refused = cli("generate", prompts, "--shards", "0")
    assert refused.exit_code == 4
    assert "params.output.images_per_shard" in refused.stderr


def test_results_of_a_caption_job_make_a_trainer_folder(
    cli: Cli, caption_run: Run, photos: Path, tmp_path: Path
) -> None:
    job_id = caption_run.job_id
    first = cli("results", job_id, "--out", tmp_path, "--sidecars", "--errors", "--images", photos)
    assert first.exit_code == 0, first.stderr
    results = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    captions = {line["custom_id"]: line["caption"] for line in results}
    assert sorted(captions) == ["blue.jpg", "red.png", "sub/green.webp"]
    with (tmp_path / "captions.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["custom_id"]: r["caption"] for r in rows} == captions
    assert all(r["source"].startswith("file_") for r in rows)  # what was captioned
    assert {r["custom_id"]: r["image"] for r in rows} == {  # the user's names, not file ids
        rel: f"images/{rel}" for rel in captions
    }
    for rel, caption in captions.items():
        copy = tmp_path / "images" / rel
        assert copy.read_bytes() == (photos / rel).read_bytes()
        assert copy.with_suffix(".txt").read_text(encoding="utf-8") == caption
    assert not (tmp_path / "images" / "broken.png").exists()
    errors = [json.loads(x) for x in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert [(e["custom_id"], e["status"]) for e in errors] == [("broken.png", "failed")]

    second = cli("results", job_id, "--out", tmp_path, "--sidecars", "--images", photos)
    assert second.exit_code == 0, second.stderr
    assert "0 downloaded, 3 already present" in second.stderr


def test_caption_sidecars_without_local_images(
    cli: Cli, caption_run: Run, photos: Path, tmp_path: Path
) -> None:
    """Uploaded inputs come back through GET /v1/files/{id}/content: no --images needed."""
    run = cli("results", caption_run.job_id, "--out", tmp_path, "--sidecars")
    assert run.exit_code == 0, run.stderr
    assert (tmp_path / "images" / "red.png").read_bytes() == (photos / "red.png").read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    [red] = [row for row in rows if row["custom_id"] == "red.png"]
    # The tiny random model's caption may be empty; the sidecar must hold exactly it.
    assert (tmp_path / "images" / "red.txt").read_text().strip() == red["caption"].strip()
    assert (tmp_path / "captions.csv").is_file()


def test_status_shows_counts_output_and_first_errors(cli: Cli, caption_run: Run) -> None:
    run = cli("status", caption_run.job_id)
    assert run.exit_code == 0, run.stderr
    text = " ".join(run.stdout.split())
    assert f"caption job {caption_run.job_id}" in text
    assert "4 total: 3 succeeded, 1 failed" in text
    assert "broken.png" in text and "errors" in text
    assert "results.jsonl" in run.stdout.replace("\n", "").replace("│", "").replace(" ", "")
    raw = cli("status", caption_run.job_id, "--json")
    assert json.loads(raw.stdout)["id"] == caption_run.job_id


def test_list_pages_newest_first(cli: Cli, caption_run: Run, generate_run: Run) -> None:
    run = cli("list")
    assert run.exit_code == 0, run.stderr
    assert caption_run.job_id in run.stdout and generate_run.job_id in run.stdout
    only = cli("list", "--kind", "generate", "--status", "succeeded")
    assert generate_run.job_id in only.stdout and caption_run.job_id not in only.stdout

    ids = [job["id"] for job in json.loads(cli("list", "--json", "--limit", "100").stdout)["data"]]
    first = cli("list", "--limit", "1")
    assert ids[0] in first.stdout and ids[1] not in first.stdout
    cursor = first.stderr.split("--after", 1)[1].split()[0]
    second = cli("list", "--limit", "1", "--after", cursor)
    assert second.exit_code == 0, second.stderr
    assert ids[1] in second.stdout and ids[0] not in second.stdout


def test_watch_exit_codes_of_finished_jobs(cli: Cli, caption_run: Run, generate_run: Run) -> None:
    assert cli("watch", generate_run.job_id).exit_code == 0
    assert cli("watch", caption_run.job_id).exit_code == 1


def test_cancel_then_watch_exits_2(cli: Cli, tmp_path: Path) -> None:
    prompts = tmp_path / "many.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(400)))
    job_id = cli("generate", prompts, "--n", "2").job_id

    waited = cli("watch", job_id, "--timeout", "1", "--interval", "0.2")
    assert waited.exit_code == 5, waited.stderr
    assert "still running" in waited.stderr

    cancelled = cli("cancel", job_id)
    assert cancelled.exit_code == 0, cancelled.stderr
    assert job_id in cancelled.stdout and "cancell" in cancelled.stdout

    watched = cli("watch", job_id, "--interval", "0.2", "--timeout", TIMEOUT)
    assert watched.exit_code == 2, watched.stderr
    assert f"{job_id} cancelled" in watched.stderr

    again = cli("cancel", job_id)
    assert again.exit_code == 4
    assert "conflict (409)" in one_error_line(again)


def test_a_job_whose_items_all_fail_exits_3(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG but not really")
    run = cli("caption", tmp_path, "--wait", "--interval", "0.2", "--timeout", TIMEOUT)
    assert run.exit_code == 3, run.stderr
    assert "failed" in run.stderr


def test_generate_sends_a_manifest_above_the_inline_limit(
    cli: Cli, api: Client, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "a cat", "custom_id": "cat"}\n"a dog"\n{"prompt": "a cow", "seed": 99}\n'
    )
    run = cli(
        "generate",
        prompts,
        "--seed",
        "1",
        "--inline-limit",
        "2",
        "--wait",
        "--interval",
        "0.2",
        "--timeout",
        TIMEOUT,
    )
    assert run.exit_code == 0, run.stderr
    assert "manifest prompts.jsonl uploaded" in run.stderr
    job = api.get_job(run.job_id)
    assert "manifest" in job["source"]
    items = api.items(run.job_id)["data"]
    assert [(i["custom_id"], i["input"]["seed"]) for i in items] == [
        ("cat", 1),
        ("2", 2),
        ("3", 99),
    ]


def test_caption_folder_above_the_inline_limit_goes_as_a_manifest_of_file_ids(
    cli: Cli, api: Client, photos: Path
) -> None:
    run = cli(
        "caption",
        photos,
        "--max-new-tokens",
        "4",
        "--inline-limit",
        "2",
        "--wait",
        "--interval",
        "0.2",
        "--timeout",
        TIMEOUT,
    )
    assert run.exit_code == 1, run.stderr  # broken.png fails, the rest succeed
    assert "manifest" in run.stderr and "uploaded" in run.stderr
    job = api.get_job(run.job_id)
    assert "manifest" in job["source"]
    counts = job["counts"]
    assert counts["total"] == 4  # red, blue, sub/green, broken (notes.md is not an image)
    assert counts["failed"] == 1 and counts["succeeded"] == counts["total"] - 1
    items = api.items(run.job_id)["data"]
    assert all(i["input"]["image"].startswith("file_") for i in items)
    assert {i["custom_id"] for i in items} == {
        "red.png",
        "blue.jpg",
        "sub/green.webp",
        "broken.png",
    }


def test_caption_an_s3_prefix_and_copy_its_images(cli: Cli, stack: Stack, tmp_path: Path) -> None:
    run = cli(
        "caption",
        stack.s3.prefix,
        "--max-new-tokens",
        "4",
        "--wait",
        "--interval",
        "0.2",
        "--timeout",
        TIMEOUT,
    )
    assert run.exit_code == 0, run.stderr
    assert "items read from the source by a worker" in run.stderr
    out = tmp_path / "out"
    got = cli("results", run.job_id, "--out", out, "--sidecars")
    assert got.exit_code == 0, got.stderr
    assert (out / "images" / "cat.png").is_file() and (out / "images" / "cat.txt").is_file()
    with Image.open(out / "images" / "deep" / "dog.jpg") as im:
        assert im.size == (40, 40)


def test_caption_a_local_manifest(cli: Cli, stack: Stack, api: Client, tmp_path: Path) -> None:
    manifest = tmp_path / "todo.jsonl"
    manifest.write_text(
        json.dumps({"image": f"{stack.s3.prefix}cat.png", "custom_id": "c"})
        + "\n"
        + json.dumps({"image": f"{stack.s3.prefix}deep/dog.jpg", "prompt": "What animal?"})
        + "\n"
    )
    run = cli("caption", manifest, "--wait", "--interval", "0.2", "--timeout", TIMEOUT)
    assert run.exit_code == 0, run.stderr
    assert api.get_job(run.job_id)["source"]["file_id"].startswith("file_")


def test_unknown_job_is_one_line_404(cli: Cli) -> None:
    run = cli("status", "job_000000000000000000000000")
    assert run.exit_code == 4
    assert one_error_line(run) == "error: not found (404): no job 'job_000000000000000000000000'"


def test_delete_a_finished_job_and_refuse_a_running_one(cli: Cli, tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    done = cli("generate", prompts, "--wait", "--interval", "0.2", "--timeout", TIMEOUT)
    assert done.exit_code == 0, done.stderr
    gone = cli("delete", done.job_id)
    assert gone.exit_code == 0, gone.stderr
    assert f"{done.job_id} deleted (" in gone.stdout and "stored objects removed" in gone.stdout
    again = cli("status", done.job_id)
    assert again.exit_code == 4 and "404" in again.stderr
