"""The model runtime's lifecycle in a worker process: load the engine once, lazily.

`get_engine()` loads the checkpoint named by the settings the first time it is called (the
Celery signals in `worker.app` call it at process start, so the first chunk does not wait);
`reset()` forgets everything, e.g. after a fork or between tests.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from functools import lru_cache
from typing import TYPE_CHECKING

from janus_batch.settings import Settings, get_settings
from janus_batch.storage import Storage, storage_from_settings

if TYPE_CHECKING:
    from janus import JanusEngine

log = logging.getLogger(__name__)

_lock = threading.Lock()
_engine: JanusEngine | None = None


def configure_torch(settings: Settings) -> None:
    """Apply the torch thread count from the settings (torch's own default when unset)."""
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)


def load_engine(settings: Settings) -> JanusEngine:
    """Load the engine described by `settings` (model, device, dtype, batch rows), or the one
    `settings.engine = "module:function"` returns for them (a simulated engine in benches)."""
    from janus import JanusEngine

    configure_torch(settings)
    if settings.engine != "janus":
        module, _, function = settings.engine.partition(":")
        factory = getattr(importlib.import_module(module), function)
        log.warning("engine %s instead of the model (JANUS_BATCH_ENGINE)", settings.engine)
        engine: JanusEngine = factory(settings)
        return engine
    started = time.monotonic()
    engine = JanusEngine.load(
        settings.model,
        device=settings.device,
        dtype=settings.dtype,
        max_batch_rows=max(2, settings.batch_rows),
    )
    log.info(
        "model %s loaded on %s (%s, %d rows per pass) in %.1fs",
        settings.model,
        engine.device,
        engine.dtype,
        engine.max_batch_rows,
        time.monotonic() - started,
    )
    return engine


def get_engine() -> JanusEngine:
    """The process's engine, loaded on first use from `get_settings()`."""
    global _engine
    with _lock:
        if _engine is None:
            _engine = load_engine(get_settings())
        return _engine


def set_engine(engine: JanusEngine | None) -> None:
    """Install an already-loaded engine (tests, notebooks) or forget it (None)."""
    global _engine
    with _lock:
        _engine = engine


@lru_cache
def get_storage() -> Storage:
    """The process's storage, from `get_settings()`."""
    return storage_from_settings(get_settings())


def reset() -> None:
    """Forget the engine and the storage client (after fork; between tests)."""
    set_engine(None)
    get_storage.cache_clear()
