"""How `cancel`, `list` and `watch` describe a cancelled job: what the cancel did and what
happens next, and done items told apart from cancelled ones (never "300/300")."""

from __future__ import annotations

from contextlib import contextmanager
from io import StringIO
from typing import Any

import pytest
from rich.console import Console

from janus_batch.client.cli import jobs as jobs_cli
from janus_batch.client.cli.jobs import progress_text
from janus_batch.client.cli.watch import describe, exit_code, summary, watch_jobs
from tests.cli.conftest import invoke


def job(status: str, **counts: int) -> dict[str, Any]:
    base = {"pending": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    base.update(counts)
    base["total"] = sum(base.values())
    return {
        "id": "job_1",
        "kind": "caption",
        "status": status,
        "label": None,
        "counts": base,
        "created_at": "2026-11-03T14:05:09+00:00",
    }


class FakeClient:
    """What `make_client` returns, answering with fixed jobs."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.answer

    def list_jobs(self, **_: Any) -> dict[str, Any]:
        return {"data": [self.answer], "has_more": False}


@pytest.fixture
def answer(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    reply: dict[str, Any] = {}

    @contextmanager
    def make_client(*_: Any) -> Any:
        yield FakeClient(reply)

    monkeypatch.setattr(jobs_cli, "make_client", make_client)
    return reply


def test_cancel_says_what_will_happen_to_running_items(answer: dict[str, Any]) -> None:
    answer.update(job("cancelling", succeeded=260, failed=2, cancelled=14, running=24))
    run = invoke({}, "cancel", "job_1")
    assert run.exit_code == 0, run.stderr
    text = " ".join(run.stdout.split())
    assert (
        "job_1 cancelling: 14 pending items cancelled; 24 running items will finish or be "
        "cancelled before their next pass; 260 succeeded and 2 failed kept"
    ) in text
    assert "finishing" not in text


def test_cancel_with_nothing_running_names_no_running_items(answer: dict[str, Any]) -> None:
    answer.update(job("finalizing", succeeded=1, cancelled=3))
    run = invoke({}, "cancel", "job_1")
    text = " ".join(run.stdout.split())
    assert "job_1 finalizing: 3 pending items cancelled; 1 succeeded and 0 failed kept" in text
    assert "running" not in text


def test_list_shows_done_and_cancelled_apart(answer: dict[str, Any]) -> None:
    answer.update(job("cancelled", succeeded=280, failed=4, cancelled=16))
    run = invoke({"COLUMNS": "200"}, "list")
    assert run.exit_code == 0, run.stderr
    assert "284 done, 16 cancelled of 300" in run.stdout
    assert "300/300" not in run.stdout


def test_progress_text() -> None:
    assert progress_text(job("running", succeeded=3, failed=1, pending=4)["counts"]) == "4/8"
    cancelled = job("cancelled", succeeded=284, cancelled=16)["counts"]
    assert progress_text(cancelled) == "284 done, 16 cancelled of 300"


def test_watch_counts_cancelled_items_apart() -> None:
    """`watch` off a terminal: `284/300 ... 16 cancelled`, not `300/300`."""

    class Jobs:
        def get_job(self, job_id: str) -> dict[str, Any]:
            return job("cancelled", succeeded=280, failed=4, cancelled=16)

    log = StringIO()
    watch_jobs(Jobs(), ["job_1"], Console(file=log, width=200), interval=0)  # type: ignore[arg-type]
    line = " ".join(log.getvalue().split())
    assert line.startswith("job_1 284/300 cancelled 280 ok 4 failed 16 cancelled"), line
    assert "300/300" not in line


def test_list_has_a_model_column_when_its_jobs_are_of_several_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    page: list[dict[str, Any]] = []

    class Jobs:
        def list_jobs(self, **_: Any) -> dict[str, Any]:
            return {"data": page, "has_more": False}

    @contextmanager
    def make_client(*_: Any) -> Any:
        yield Jobs()

    monkeypatch.setattr(jobs_cli, "make_client", make_client)
    page.append({**job("running", pending=3), "model": "deepseek-community/Janus-Pro-1B"})
    one = invoke({"COLUMNS": "200"}, "list")
    assert "model" not in one.stdout and "Janus-Pro-1B" not in one.stdout  # nothing to tell
    page.append({**job("queued", pending=1), "id": "job_2", "model": "/models/janus-pro-7b/"})
    two = invoke({"COLUMNS": "200"}, "list")
    assert two.exit_code == 0, two.stderr
    rows = {line.split()[0]: line.split() for line in two.stdout.splitlines() if "job_" in line}
    assert "model" in two.stdout.splitlines()[0]
    assert rows["job_1"][2] == "Janus-Pro-1B" and rows["job_2"][2] == "janus-pro-7b"


def expired_job() -> dict[str, Any]:
    found = job("expired", succeeded=280, failed=4, expired=16)
    found.update(
        expires_at="2026-11-04T14:05:09+00:00",
        completion_window="24h",
        started_at="2026-11-03T14:05:10+00:00",
        finished_at="2026-11-04T14:05:20+00:00",
        model="tiny",
        params={},
    )
    return found


def test_expired_items_are_told_apart_everywhere(answer: dict[str, Any]) -> None:
    """An expired job is `284 done, 16 expired of 300` in list and watch, its window in
    status, and `--wait` / `watch` exit with 6."""
    assert progress_text(expired_job()["counts"]) == "284 done, 16 expired of 300"
    both = job("cancelled", succeeded=10, cancelled=2, expired=3)["counts"]
    assert progress_text(both) == "10 done, 2 cancelled, 3 expired of 15"
    answer.update(expired_job())
    listed = invoke({"COLUMNS": "200"}, "list", "--status", "expired")
    assert listed.exit_code == 0, listed.stderr
    assert "284 done, 16 expired of 300" in listed.stdout and "expired" in listed.stdout

    panel = " ".join(_render(jobs_cli.status_panel(expired_job(), [_expired_item()])).split())
    assert "16 expired" in panel
    assert f"expires {jobs_cli.when('2026-11-04T14:05:09+00:00')} (window 24h)" in panel
    assert "#7 (expired): expired: not finished within" in panel
    assert "... 19 more" in panel  # 4 failed + 16 expired, 1 shown

    class Jobs:
        def get_job(self, job_id: str) -> dict[str, Any]:
            return expired_job()

    log = StringIO()
    watch_jobs(Jobs(), ["job_1"], Console(file=log, width=200), interval=0)  # type: ignore[arg-type]
    line = " ".join(log.getvalue().split())
    assert line.startswith("job_1 284/300 expired 280 ok 4 failed 16 expired"), line
    assert exit_code(expired_job()) == 6
    assert "16 expired (not finished within its completion window)" in summary(expired_job())


def test_watch_shows_when_a_running_job_expires() -> None:
    running = job("running", succeeded=1, pending=3)
    running["expires_at"] = "2030-01-02T03:04:05+00:00"
    assert "expires " in describe(running)
    del running["expires_at"]
    assert "expires" not in describe(running)


def _expired_item() -> dict[str, Any]:
    return {
        "idx": 7,
        "custom_id": None,
        "error_class": "expired",
        "error": "expired: not finished within the job's completion window (24h, ended ...)",
    }


def _render(renderable: Any) -> str:
    console = Console(file=StringIO(), width=300)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]
