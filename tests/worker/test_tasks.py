"""Tasks retry transient database errors through Celery instead of losing the message."""

from __future__ import annotations

import pytest
from celery.exceptions import Retry
from sqlalchemy.exc import OperationalError

from janus_batch.storage import StorageError, TransientStorageError
from worker import tasks
from worker.sources import TransientSourceError


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


@pytest.mark.parametrize("task", [tasks.expand_source, tasks.finalize_job])
@pytest.mark.parametrize(
    "error",
    [
        TransientStorageError("cannot write s3://b/jobs/x/results.jsonl: Could not connect"),
        TransientSourceError("cannot list s3://b/photos/: SlowDown (HTTP 503)"),
    ],
)
def test_storage_down_makes_expand_and_finalize_retry(
    task, error, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage down is no reason to fail a job's expansion or its manifests: Celery retries."""

    def pipeline(*_args):
        raise error

    monkeypatch.setattr(tasks, "current_context", lambda: None)
    monkeypatch.setattr(tasks, "expand_pipeline", pipeline)
    monkeypatch.setattr(tasks, "finalize_pipeline", pipeline)
    with pytest.raises(Retry):
        task.apply(args=["job_x"], throw=True).get()


def test_a_permanent_storage_error_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    def pipeline(*_args):
        raise StorageError("cannot write s3://b/x: AccessDenied (HTTP 403)")

    monkeypatch.setattr(tasks, "current_context", lambda: None)
    monkeypatch.setattr(tasks, "finalize_pipeline", pipeline)
    with pytest.raises(StorageError):
        tasks.finalize_job.apply(args=["job_x"], throw=True).get()
