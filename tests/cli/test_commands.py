"""The CLI without a server: reading inputs, naming outputs, exit codes, usage and
connection errors (one red line, exit 4, never a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from janus_batch.client.cli.common import UsageError
from janus_batch.client.cli.inputs import LINE, caption_target, read_prompts, with_seeds
from janus_batch.client.cli.results import InputNames
from janus_batch.client.cli.upload import find_images
from janus_batch.client.cli.watch import duration, exit_code
from janus_batch.ops.stack import free_port
from tests.cli.conftest import Run, draw_images, invoke

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: object) -> Run:
    return invoke({"JANUS_BATCH_API_URL": f"http://127.0.0.1:{free_port()}"}, *args)


def test_prompts_txt_one_per_line_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a fox\n\n   \n  a cat  \n")
    assert read_prompts(path) == [
        {"prompt": "a fox", "custom_id": "1", LINE: 1},
        {"prompt": "a cat", "custom_id": "4", LINE: 4},
    ]


def test_prompts_jsonl_items_and_seeds(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "a", "n": 3}\n"b"\n\n{"prompt": "c", "seed": 5, "custom_id": "x"}\n'
    )
    items = with_seeds(read_prompts(path), 10)
    assert [item.pop(LINE) for item in items] == [1, 2, 4]
    assert items == [
        {"prompt": "a", "n": 3, "custom_id": "1", "seed": 10},
        {"prompt": "b", "custom_id": "2", "seed": 11},
        {"prompt": "c", "seed": 5, "custom_id": "x"},
    ]
    assert with_seeds(items[:1], None) == items[:1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "has no prompts"),
        ('{"prompt": "a"}\n{oops\n', "line 2: invalid JSON"),
        ("[1, 2]\n", "line 1: expected an object"),
    ],
)
def test_bad_prompt_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        read_prompts(path)


def test_caption_targets(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text("{}\n")
    (tmp_path / "a.png").write_bytes(b"x")
    assert caption_target("s3://b/photos/").kind == "s3_prefix"
    assert caption_target("s3://b/list.jsonl").kind == "manifest_uri"
    assert caption_target("https://h/list.jsonl?sig=1").kind == "manifest_uri"
    assert caption_target(str(tmp_path)).kind == "folder"
    assert caption_target(str(tmp_path / "m.jsonl")).kind == "manifest_file"
    assert caption_target(str(tmp_path / "a.png")).kind == "image"
    for bad in ("s3:///x", "https://h/photos/", str(tmp_path / "missing")):
        with pytest.raises(UsageError):
            caption_target(bad)


def test_find_images_is_recursive_and_skips_hidden_and_other_files(tmp_path: Path) -> None:
    draw_images(tmp_path)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "thumb.png").write_bytes(b"x")
    (tmp_path / "UPPER.JPG").write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["UPPER.JPG", "blue.jpg", "broken.png", "red.png", "sub/green.webp"]


def test_input_names_for_sidecars() -> None:
    names = InputNames({"s3_prefix": "s3://b/pics"})

    def line(idx: int, image: str, custom_id: str | None = None) -> dict:
        return {"idx": idx, "custom_id": custom_id, "input": {"image": image}}

    assert names.name(line(0, "file_1", "sub/cat.png")).as_posix() == "sub/cat.png"
    assert names.name(line(1, "s3://b/pics/deep/dog.jpg")).as_posix() == "deep/dog.jpg"
    assert names.name(line(2, "https://h/x/cow.webp?sig=1", "cow-1")).as_posix() == "cow-1.webp"
    assert names.name(line(3, "https://h/x/y.png", "../../etc/passwd")).as_posix() == "y.png"
    # a second image with the same stem gets its own name (each needs its own .txt)
    assert names.name(line(4, "file_2", "sub/cat.jpg")).as_posix() == "sub/cat_4.jpg"
    assert names.name(line(5, "file_3")).as_posix() == "00000005.png"


def job(status: str, failed: int = 0) -> dict:
    return {"status": status, "counts": {"failed": failed}}


def test_exit_codes() -> None:
    assert exit_code(job("succeeded")) == 0
    assert exit_code(job("succeeded", failed=2)) == 1
    assert exit_code(job("cancelled", failed=2)) == 2
    assert exit_code(job("failed", failed=3)) == 3
    assert duration(75.4) == "1:15" and duration(3725) == "1:02:05" and duration(None) == "-"


def test_help_documents_exit_codes() -> None:
    for command in ("caption", "generate", "watch"):
        run = cli(command, "--help")
        assert run.exit_code == 0
        assert "4 usage, connection or API error" in " ".join(run.stdout.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("caption", "/no/such/folder"), "error: /no/such/folder does not exist"),
        (("generate", "/no/such/prompts.txt"), "error: /no/such/prompts.txt is not a file"),
        (("caption", "ftp://host/x"), "does not exist"),
    ],
)
def test_usage_errors_exit_4(args: tuple[str, ...], message: str) -> None:
    run = cli(*args)
    assert run.exit_code == 4
    assert message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_bad_command_lines_exit_4_not_2() -> None:
    assert cli("status").exit_code == 4  # missing argument
    assert cli("generate", "p.txt", "--format", "gif").exit_code == 4
    assert cli("no-such-command").exit_code == 4


def test_an_empty_folder_is_a_usage_error(tmp_path: Path) -> None:
    run = cli("caption", tmp_path)
    assert run.exit_code == 4
    assert "no images" in run.stderr


def test_connection_refused_in_a_real_process(tmp_path: Path) -> None:
    """Commands with nothing listening: exit 4, one line, no traceback."""
    url = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "JANUS_BATCH_API_URL": url, "COLUMNS": "200"}
    draw_images(tmp_path, corrupt=False)
    for args in (["status", "job_1"], ["list"], ["caption", str(tmp_path)]):
        proc = subprocess.run(
            [sys.executable, "-m", "janus_batch.client.cli.main", *args],
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 4, proc.stderr
        assert proc.stdout == ""
        assert proc.stderr.strip().splitlines()[-1] == (
            f"error: cannot reach the API at {url} (connection refused): is it running? "
            "Pass --api-url or set JANUS_BATCH_API_URL."
        )
        assert "Traceback" not in proc.stderr


def test_status_and_watch_say_what_holds_a_job_up() -> None:
    """Items waiting out a storage outage, and the API's notes, are shown by `status` (and
    printed once by `watch`); a final job shows none."""
    from rich.console import Console

    from janus_batch.client.cli.jobs import status_panel
    from janus_batch.client.cli.watch import notices

    job = {
        "id": "job_1", "kind": "caption", "status": "running", "live_workers": 1,
        "counts": {"total": 3, "pending": 2, "running": 0, "succeeded": 1, "failed": 0,
                   "cancelled": 0},
        "created_at": "2026-12-03T10:00:00+00:00", "started_at": "2026-12-03T10:00:01+00:00",
        "waiting": {"since": "2026-12-03T10:00:05+00:00",
                    "reason": "waiting: cannot fetch s3://b/0.jpg: Could not connect"},
        "notes": ["2 items wait on expired leases (their worker stopped) and the sweeper has "
                  "never run: start the control worker with beat to hand them back"],
    }  # fmt: skip
    console = Console(record=True, width=300)
    console.print(status_panel(job, []))
    shown = " ".join(console.export_text().split())
    assert "items waiting since" in shown and "none failed for it" in shown
    assert "cannot fetch s3://b/0.jpg: Could not connect" in shown
    assert "the sweeper has never run" in shown
    assert len(notices(job)) == 2
    assert notices({**job, "status": "succeeded"}) == []
