"""Fixtures of the janus runtime tests: one tiny checkpoint per session, CPU, fp32, offline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import huggingface_hub.constants as hub_constants
import pytest
import torch

from janus import JanusEngine

hub_constants.HF_HUB_OFFLINE = True  # in case huggingface_hub was imported before this file


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One thread: stable timings on a small shared machine (see JANUS_NOTES)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def engine(tiny_checkpoint) -> JanusEngine:
    return JanusEngine.load(str(tiny_checkpoint), device="cpu", dtype="float32", max_batch_rows=16)


@pytest.fixture
def make_engine(engine):
    """Engines sharing the session's weights with another max_batch_rows, and a pass log."""

    def make(max_batch_rows: int = 16) -> tuple[JanusEngine, list[tuple[str, int, int]]]:
        other = JanusEngine(
            engine.model,
            engine.processor,
            model_name=engine.model_name,
            max_batch_rows=max_batch_rows,
        )
        passes: list[tuple[str, int, int]] = []
        other.on_pass = lambda kind, units, rows: passes.append((kind, units, rows))
        return other, passes

    return make


@pytest.fixture(scope="session")
def reference(tiny_checkpoint):
    """transformers' own model and processor for the same checkpoint (separate instance).

    use_kernels=False: transformers' own layers (5.25 turned hub kernels on by default)."""
    from transformers import AutoProcessor, JanusForConditionalGeneration

    model = JanusForConditionalGeneration.from_pretrained(
        str(tiny_checkpoint), dtype=torch.float32, use_kernels=False
    ).eval()
    return model, AutoProcessor.from_pretrained(str(tiny_checkpoint))
