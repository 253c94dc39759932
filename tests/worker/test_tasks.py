"""Tasks retry transient database errors through Celery instead of losing the message."""

from __future__ import annotations

import pytest
from celery.exceptions import Retry
from sqlalchemy.exc import OperationalError

from worker import tasks


@pytest.mark.parametrize(
    "task", [tasks.caption_chunk, tasks.generate_chunk, tasks.expand_source, tasks.finalize_job]
)
def test_a_database_error_makes_the_task_retry(task, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_context():
        raise OperationalError("UPDATE items ...", {}, Exception("deadlock detected"))

    monkeypatch.setattr(tasks, "current_context", broken_context)
    args = ["job_x", [1, 2]] if "chunk" in task.name else ["job_x"]
    with pytest.raises(Retry):
        task.apply(args=args, throw=True).get()


def test_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_context():
        raise KeyError("a bug")

    monkeypatch.setattr(tasks, "current_context", broken_context)
    with pytest.raises(KeyError):
        tasks.caption_chunk.apply(args=["job_x", [1]], throw=True).get()
