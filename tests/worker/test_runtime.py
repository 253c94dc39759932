"""The engine lifecycle, the worker's model-loading decision, task registration (metrics are
in test_metrics)."""

from __future__ import annotations

from janus_batch import constants as c
from worker import runtime


def test_engine_loads_once_from_settings(worker_env: dict[str, str]) -> None:
    runtime.reset()
    try:
        engine = runtime.get_engine()
        assert runtime.get_engine() is engine
        assert engine.model_name == worker_env["JANUS_BATCH_MODEL"]
        assert str(engine.device) == "cpu" and engine.max_batch_rows == 4
    finally:
        runtime.reset()


def test_model_queues_decide_loading() -> None:
    from worker.app import consumes_model_queues

    assert consumes_model_queues(None)
    assert consumes_model_queues([c.CAPTION_QUEUE, c.CONTROL_QUEUE])
    assert consumes_model_queues([c.GENERATE_QUEUE])
    assert not consumes_model_queues([c.CONTROL_QUEUE])


def test_tasks_are_registered_by_name() -> None:
    from celery import Celery

    import worker.tasks  # noqa: F401

    app = Celery("check")
    app.finalize()
    names = {c.CAPTION_CHUNK_TASK, c.GENERATE_CHUNK_TASK, c.EXPAND_SOURCE_TASK,
             c.FINALIZE_JOB_TASK, c.SWEEP_TASK}  # fmt: skip
    assert names <= set(app.tasks)
