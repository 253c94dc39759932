"""What a pipeline function needs from its process: settings, storage, Celery app, engine.

Tasks build it from the process's caches with `current_context()`; tests build their own
(a test database, a tiny engine) and call the pipeline functions directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery import Celery

from janus_batch.queue import get_celery
from janus_batch.settings import Settings, get_settings
from janus_batch.storage import Storage
from worker import runtime

if TYPE_CHECKING:
    from janus import JanusEngine


@dataclass(frozen=True)
class Context:
    """The dependencies of the pipeline functions; `engine` is called only when needed."""

    settings: Settings
    storage: Storage
    app: Celery
    engine: Callable[[], JanusEngine] = runtime.get_engine

    @property
    def database_url(self) -> str:
        """The job table's URL."""
        return self.settings.resolved_database_url()


def current_context() -> Context:
    """The context of this process, from the cached settings, storage, app and engine."""
    return Context(settings=get_settings(), storage=runtime.get_storage(), app=get_celery())
