"""A simulated engine for measuring the worker's pipeline without a GPU.

`SimulatedEngine` is a `JanusEngine` on a tiny random checkpoint at the real 384x384 /
576-token shape, so `prepare()` (image preprocessing, tokenizing), `unit_rows()` and the shape
keys the packing uses are the real ones. Only the pass-level work is simulated:

- `run_pass(units)` validates the pass like the real engine (one shape key, at most
  `max_batch_rows` rows), then sleeps `pass_seconds` (a forward pass of fixed cost, whatever
  its fill; 0 = a zero-cost model) holding the engine's lock, records the pass like the real
  engine (`forward_passes`, the `on_pass` hook) and returns "a simulated caption" per caption
  unit, or 576 zero tokens per image unit;
- `decode(tokens)` returns a deterministic photo-like 384x384 RGB picture (smooth gradients
  plus mild noise, from a numpy generator seeded by the tokens) that costs about what a real
  generated image costs to PNG-encode (~20-30 ms at zlib level 6 on one core). It takes no
  simulated time: VQ decoding is under 1% of a GPU's time next to the 576 decode steps.

A worker uses it with `JANUS_BATCH_ENGINE=bench.simulated_engine:load_simulated`, plus:

    JANUS_SIM_PASS_SECONDS   seconds per forward pass (default 0.25; 0 = zero-cost model)
    JANUS_SIM_CHECKPOINT     the tiny checkpoint's directory (made there when missing;
                             default <tmp>/janus-sim-checkpoint-384)

The outputs are not a model's: this measures scheduling, packing, I/O and bookkeeping only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from janus import CaptionRequest, JanusEngine, hf_adapter, make_tiny_checkpoint
from janus.caption import CaptionUnit

log = logging.getLogger(__name__)

IMAGE_SIZE = 384
IMAGE_TOKENS = 576
CAPTION_TEXT = "a simulated caption"
DEFAULT_PASS_SECONDS = 0.25
NOISE_SIGMA = 6.0
"""Noise of the simulated pictures: makes their PNG cost that of a real generated image."""

_make_lock = threading.Lock()


def default_checkpoint() -> pathlib.Path:
    """Where the tiny checkpoint lives: JANUS_SIM_CHECKPOINT, else a fixed temp directory."""
    path = os.environ.get("JANUS_SIM_CHECKPOINT")
    if path:
        return pathlib.Path(path)
    return pathlib.Path(tempfile.gettempdir()) / "janus-sim-checkpoint-384"


def pass_seconds_from_env() -> float:
    """JANUS_SIM_PASS_SECONDS (default 0.25)."""
    value = float(os.environ.get("JANUS_SIM_PASS_SECONDS", DEFAULT_PASS_SECONDS))
    if value < 0:
        raise ValueError(f"JANUS_SIM_PASS_SECONDS must be >= 0, got {value}")
    return value


def ensure_checkpoint(path: str | pathlib.Path | None = None) -> pathlib.Path:
    """The tiny 384x384 checkpoint at `path`, made first if missing. It is written to a
    sibling directory and renamed into place, so processes starting together never load a
    half-written one."""
    target = pathlib.Path(path) if path is not None else default_checkpoint()
    if (target / "config.json").exists():
        return target
    with _make_lock:
        if (target / "config.json").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            make_tiny_checkpoint(scratch, image_size=IMAGE_SIZE)
            try:
                scratch.rename(target)
            except OSError:  # another process won the race (or an empty directory is there)
                if not (target / "config.json").exists():
                    shutil.rmtree(target, ignore_errors=True)
                    scratch.rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _photo_like(seed: int) -> Image.Image:
    """A photo-like RGB picture, a pure function of `seed`."""
    rng = np.random.default_rng(seed)
    side = IMAGE_SIZE
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    pixels = np.empty((side, side, 3), np.float32)
    for c in range(3):
        fx, fy, fxy = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(1.0, 3.0)
        phase = rng.uniform(0, 2 * np.pi, size=2)
        pixels[..., c] = (
            128
            + 60 * np.sin(2 * np.pi * (fx * x + fy * y) + phase[0])
            + 40 * np.cos(2 * np.pi * fxy * x * y + phase[1])
        )
    pixels += rng.normal(0.0, NOISE_SIGMA, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@lru_cache(maxsize=32)
def _picture(image_tokens: tuple[int, ...]) -> Image.Image:
    digest = hashlib.blake2b(np.asarray(image_tokens, dtype=np.int64).tobytes(), digest_size=8)
    return _photo_like(int.from_bytes(digest.digest(), "little"))


def simulated_picture(image_tokens: Sequence[int]) -> Image.Image:
    """The simulated decode of `image_tokens`: deterministic, a new Image each call (a copy
    of a cached one: ~0.02 ms, so the engine thread spends no real time here)."""
    key = image_tokens if isinstance(image_tokens, tuple) else tuple(image_tokens)
    return _picture(key).copy()


class SimulatedEngine(JanusEngine):
    """A simulated engine for measuring the pipeline without a GPU: the real `prepare` and
    packing on a tiny 384x384 checkpoint, forward passes of a fixed `pass_seconds`, fixed
    outputs (see the module docstring)."""

    pass_seconds: float = DEFAULT_PASS_SECONDS

    @classmethod
    def from_engine(cls, engine: JanusEngine, pass_seconds: float) -> SimulatedEngine:
        """The simulated engine with `engine`'s model, processor and settings."""
        simulated = cls(
            engine.model,
            engine.processor,
            model_name=f"simulated:{engine.model_name}",
            max_batch_rows=engine.max_batch_rows,
            prompt_bucket=engine.prompt_bucket,
        )
        simulated.pass_seconds = pass_seconds
        return simulated

    def prepare(self, request: Any) -> list[Any]:
        """The real units, shapes included, but an image's pixels are preprocessed only once
        per (question, length): on a GPU node that CPU work runs on many cores beside the
        device; here it would compete with everything else on 2 cores, so the bench reports
        its rate as a separate limit instead of charging it to the pipeline."""
        if not isinstance(request, CaptionRequest):
            return super().prepare(request)
        key = (request.question, request.max_new_tokens)
        templates = self.__dict__.setdefault("_templates", {})
        template = templates.get(key)
        if template is None:
            [template] = super().prepare(request)
            templates[key] = template
        return [dataclasses.replace(template, request=request)]

    def run_pass(self, units: Sequence[Any]) -> list[str] | list[tuple[int, ...]]:
        """A simulated forward pass: validated like the real one, `pass_seconds` long."""
        if not units:
            return []
        rows = self.check_pass(units)
        captions = isinstance(units[0], CaptionUnit)
        with self._lock:
            started = time.perf_counter()
            if self.pass_seconds > 0:
                time.sleep(self.pass_seconds)
            if captions:
                self._record("caption", len(units), len(units), started)
                return [CAPTION_TEXT] * len(units)
            self._record("generate", len(units), rows, started)
            return [(0,) * IMAGE_TOKENS for _ in units]

    def decode(self, image_tokens: tuple[int, ...]) -> Image.Image:
        """A photo-like picture for the tokens; no simulated time (see the module docstring)."""
        return simulated_picture(image_tokens)


def load_simulated(settings: Any) -> SimulatedEngine:
    """The worker's engine factory (`JANUS_BATCH_ENGINE=bench.simulated_engine:load_simulated`):
    the tiny checkpoint from JANUS_SIM_CHECKPOINT (made if missing) on the CPU, at
    `settings.batch_rows` rows per pass, JANUS_SIM_PASS_SECONDS per pass."""
    path = ensure_checkpoint()
    with hf_adapter.quiet_progress_bars():
        engine = JanusEngine.load(
            str(path), device="cpu", dtype="float32", max_batch_rows=max(2, settings.batch_rows)
        )
    simulated = SimulatedEngine.from_engine(engine, pass_seconds_from_env())
    log.warning(
        "simulated engine ready: %s, %d rows per pass, %.3f s per pass (no model runs)",
        path,
        simulated.max_batch_rows,
        simulated.pass_seconds,
    )
    return simulated
