"""The engine lifecycle, the worker's model-loading decision, task registration (metrics are
in test_metrics)."""

from __future__ import annotations

from janus_batch import constants
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
    assert consumes_model_queues([constants.CAPTION_QUEUE, constants.CONTROL_QUEUE])
    assert consumes_model_queues([constants.GENERATE_QUEUE])
    assert not consumes_model_queues([constants.CONTROL_QUEUE])


def test_tasks_are_registered_by_name() -> None:
    from celery import Celery

    import worker.tasks  # noqa: F401

    app = Celery("check")
    app.finalize()
    names = {
        constants.CAPTION_CHUNK_TASK,
        constants.GENERATE_CHUNK_TASK,
        constants.EXPAND_SOURCE_TASK,
        constants.FINALIZE_JOB_TASK,
        constants.SWEEP_TASK,
    }
    assert names <= set(app.tasks)
