"""How big a Janus checkpoint is and how much device memory a worker needs for it, computed
from its config alone (the model is built on the meta device: no weights are read).

A worker holds the weights plus, during a forward pass, a KV cache of `BATCH_ROWS` rows, each
as long as the pass's bucketed prompt plus its new tokens (janus/decoder.py, packing.py):

- a caption pass: the image tokens plus up to CAPTION_TEXT_TOKENS of system prompt, chat
  template and question, rounded up to the prompt bucket (64), plus `max_new_tokens` rounded
  up to 64; for Janus-Pro 576 + 128 -> 704, + 128 = 832 positions;
- an image pass: a prompt of up to IMAGE_PROMPT_TOKENS (one bucket) plus one position per
  image token: 64 + 576 = 640.

One position of one row holds keys and values of every layer: layers x 2 x KV heads x head
dim values. Passes run one at a time, so the peak is the weights plus the larger pass. Not
counted: the prefill activations of one prompt, one VQ decode, the CUDA context and the
allocator's slack (together a few hundred MB on a GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import original
from .caption import NEW_TOKEN_BUCKET
from .errors import JanusLoadError
from .loading import resolve_dtype
from .packing import round_up

PROMPT_BUCKET = 64
"""Prompt lengths are rounded up to a multiple of this (JanusEngine's prompt_bucket)."""
CAPTION_TEXT_TOKENS = 128
"""Text tokens of a caption prompt budgeted beside its image tokens."""
IMAGE_PROMPT_TOKENS = 64
"""Tokens of an image-generation prompt budgeted (one prompt bucket)."""
DEFAULT_ROWS = (4, 8, 16, 32)


def empty_model(config: Any) -> torch.nn.Module:
    """transformers' Janus model for `config` on the meta device (shapes, no memory)."""
    from transformers import JanusForConditionalGeneration

    with torch.device("meta"):
        return JanusForConditionalGeneration(config)


@dataclass(frozen=True)
class PassMemory:
    """Device memory at one BATCH_ROWS value, in bytes."""

    rows: int
    caption_kv: int
    image_kv: int
    total: int
    """Weights plus the larger of the two passes' KV caches."""


@dataclass(frozen=True)
class ModelInfo:
    """Sizes of one checkpoint that decide its memory."""

    name: str
    layout: str
    """"transformers" or "original" (deepseek-ai, converted on load)."""
    parameters: int
    stored_dtype: str
    dtype: str
    """The dtype the estimate is for."""
    value_bytes: int
    layers: int
    kv_heads: int
    head_dim: int
    num_image_tokens: int

    @property
    def weight_bytes(self) -> int:
        return self.parameters * self.value_bytes

    @property
    def kv_bytes_per_position(self) -> int:
        """KV cache of one row at one position: every layer's keys and values."""
        return self.layers * 2 * self.kv_heads * self.head_dim * self.value_bytes

    def caption_positions(self, max_new_tokens: int) -> tuple[int, int]:
        """(bucketed prompt, bucketed new tokens) of a caption row."""
        prompt = round_up(self.num_image_tokens + CAPTION_TEXT_TOKENS, PROMPT_BUCKET)
        return prompt, round_up(max_new_tokens, NEW_TOKEN_BUCKET)

    def image_positions(self) -> tuple[int, int]:
        """(bucketed prompt, image tokens) of an image row."""
        return round_up(IMAGE_PROMPT_TOKENS, PROMPT_BUCKET), self.num_image_tokens

    def memory(self, rows: int, max_new_tokens: int) -> PassMemory:
        caption = rows * sum(self.caption_positions(max_new_tokens)) * self.kv_bytes_per_position
        image = rows * sum(self.image_positions()) * self.kv_bytes_per_position
        return PassMemory(rows, caption, image, self.weight_bytes + max(caption, image))


def info_from_config(
    config: Any, *, name: str, layout: str, stored_dtype: str, dtype: str | None = None
) -> ModelInfo:
    """The ModelInfo of a transformers JanusConfig; `dtype` defaults to the stored one."""
    model = empty_model(config)
    chosen = resolve_dtype(dtype or stored_dtype, torch.device("cpu"))
    text = config.text_config
    heads = int(text.num_attention_heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    vision = config.vision_config
    return ModelInfo(
        name=name,
        layout=layout,
        parameters=sum(p.numel() for p in model.parameters()),
        stored_dtype=stored_dtype,
        dtype=str(chosen).removeprefix("torch."),
        value_bytes=torch.empty((), dtype=chosen).element_size(),
        layers=int(text.num_hidden_layers),
        kv_heads=int(text.num_key_value_heads or heads),
        head_dim=int(head_dim),
        num_image_tokens=(vision.image_size // vision.patch_size) ** 2,
    )


def describe(path: str | Path, dtype: str | None = None) -> ModelInfo:
    """The ModelInfo of a local checkpoint folder in either layout (reads config.json only)."""
    from transformers import JanusConfig

    folder = Path(path)
    raw = original.read_config(folder)
    stored = original.stored_dtype(raw)
    if raw.get("model_type") == original.ORIGINAL_MODEL_TYPE:
        config = original.janus_config(raw, image_token_id=0)
        return info_from_config(
            config, name=str(path), layout="original", stored_dtype=stored, dtype=dtype
        )
    if raw.get("model_type") != "janus":
        raise JanusLoadError(
            f"{str(path)!r} is not a Janus checkpoint (model_type {raw.get('model_type')!r})"
        )
    config = JanusConfig.from_pretrained(folder)
    return info_from_config(
        config, name=str(path), layout="transformers", stored_dtype=stored, dtype=dtype
    )


def format_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def format_count(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return str(count)


def report(info: ModelInfo, rows: Sequence[int], max_new_tokens: int) -> str:
    """What `janus-batch model info` prints."""
    layout = {"original": "the original deepseek-ai layout (converted on load)"}
    caption_prompt, new = info.caption_positions(max_new_tokens)
    image_prompt, image_tokens = info.image_positions()
    lines = [
        f"{info.name}: Janus checkpoint in {layout.get(info.layout, 'transformers format')}",
        f"parameters    {info.parameters:,} ({format_count(info.parameters)})",
        f"dtype         {info.dtype} (stored {info.stored_dtype})",
        f"weights       {format_bytes(info.weight_bytes)}",
        f"KV cache      {format_bytes(info.kv_bytes_per_position)} per row and position "
        f"({info.layers} layers x keys+values x {info.kv_heads} heads x {info.head_dim} "
        f"x {info.value_bytes} bytes)",
        f"caption pass  {caption_prompt} prompt + {new} new = {caption_prompt + new} positions "
        f"per row (max_new_tokens {max_new_tokens})",
        f"image pass    {image_prompt} prompt + {image_tokens} image tokens = "
        f"{image_prompt + image_tokens} positions per row",
        "",
        f"{'BATCH_ROWS':>10}  {'caption KV':>12}  {'image KV':>12}  {'weights + larger KV':>20}",
    ]
    for memory in (info.memory(r, max_new_tokens) for r in rows):
        lines.append(
            f"{memory.rows:>10}  {format_bytes(memory.caption_kv):>12}  "
            f"{format_bytes(memory.image_kv):>12}  {format_bytes(memory.total):>20}"
        )
    return "\n".join(lines)


def sizing_table(infos: Sequence[ModelInfo], rows: Sequence[int], max_new_tokens: int) -> str:
    """README's sizing table (markdown): one line per model."""
    header = [
        "model",
        "parameters",
        "weights",
        "KV per row: caption / image",
        *(f"BATCH_ROWS={r}" for r in rows),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for info in infos:
        one = info.memory(1, max_new_tokens)
        cells = [
            info.name,
            format_count(info.parameters),
            f"{format_bytes(info.weight_bytes)} ({info.dtype})",
            f"{format_bytes(one.caption_kv)} / {format_bytes(one.image_kv)}",
            *(format_bytes(info.memory(r, max_new_tokens).total) for r in rows),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
