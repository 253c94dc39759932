"""What a pipeline function needs from its process: settings, storage, Celery app, engine.

Tasks build it from the process's caches with `current_context()`; tests build their own
(a test database, a tiny engine) and call the pipeline functions directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from celery import Celery

from janus_batch.queue import get_celery
from janus_batch.settings import Settings, get_settings
from janus_batch.storage import Storage
from worker import runtime

if TYPE_CHECKING:
    from janus import JanusEngine
    from worker.pipeline import Pipeline


class PipelineHolder:
    """Builds the pipeline (engine thread, recorder, outtake pool) on first use, once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipeline: Pipeline | None = None

    def get(self, ctx: Context) -> Pipeline:
        with self._lock:
            if self._pipeline is None:
                from worker.pipeline import Pipeline

                settings = ctx.settings
                self._pipeline = Pipeline(
                    ctx.engine,
                    ctx.database_url,
                    batch_rows=settings.batch_rows,
                    wait_seconds=settings.pass_wait_ms / 1000,
                    outtake_threads=2 * settings.upload_concurrency,  # encoding overlaps uploading
                )
            return self._pipeline

    def built(self) -> Pipeline | None:
        """The pipeline if it was built (never builds one)."""
        return self._pipeline

    def close(self) -> None:
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.close()
                self._pipeline = None


_PROCESS_PIPELINE = PipelineHolder()


@dataclass(frozen=True)
class Context:
    """The dependencies of the pipeline functions; `engine` is called only when needed."""

    settings: Settings
    storage: Storage
    app: Celery
    engine: Callable[[], JanusEngine] = runtime.get_engine
    pipelines: PipelineHolder = field(default_factory=PipelineHolder, compare=False)

    def pipeline(self) -> Pipeline:
        """The pipeline of this context (the process's, for tasks): built on first use."""
        return self.pipelines.get(self)

    @property
    def database_url(self) -> str:
        """The job table's URL."""
        return self.settings.resolved_database_url()


def storage_down_since() -> datetime | None:
    """Since when this process's pipeline has seen its storage down (None: up, or no
    pipeline in this process)."""
    pipeline = _PROCESS_PIPELINE.built()
    return pipeline.breaker.down_since if pipeline is not None else None


def current_context() -> Context:
    """The context of this process, from the cached settings, storage, app and engine."""
    return Context(
        settings=get_settings(),
        storage=runtime.get_storage(),
        app=get_celery(),
        pipelines=_PROCESS_PIPELINE,
    )
