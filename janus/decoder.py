"""A fixed-shape decoder over the Janus language model with a preallocated KV cache.

Each unit (one caption row, or the conditional + unconditional rows of one image) is
prefilled on its own at its exact prompt length, with a causal mask and no padding; its keys
and values are then placed right-aligned in a cache of `rows x (prompt_len + new_tokens)`
slots. Decoding steps run all rows together; a boolean mask hides the empty left slots and
each row continues from its own positions. Prefill shapes depend on the unit alone and step t
always reads `prompt_len + t + 1` slots of `rows` rows, so a row's arithmetic never depends on
the other rows of the pass. The transformers side (cache classes, layer calls) lives in
`hf_adapter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import hf_adapter

LAYER_LOOP = True
"""Decode steps call the Llama layers directly (the model's own forward minus its per-call
bookkeeping, ~10% of a CPU step); False, or a non-Llama text model, uses the full forward."""


class StaticDecoder:
    """Per-unit prefill, then one step per new token over all rows; returns last hidden states."""

    def __init__(self, language_model: Any, rows: int, prompt_len: int, new_tokens: int):
        self.language_model = language_model
        self.rows = rows
        self.prompt_len = prompt_len
        self.cache_len = prompt_len + new_tokens
        self.slots = hf_adapter.SlotsCache(language_model, rows, self.cache_len)
        self.hidden_size = self.slots.hidden_size
        device, dtype = self.slots.device, self.slots.dtype
        self.key_valid = torch.zeros((rows, self.cache_len), dtype=torch.bool, device=device)
        self.next_position = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.hidden = torch.zeros((rows, self.hidden_size), dtype=dtype, device=device)
        self.written = prompt_len
        self.direct = LAYER_LOOP and hf_adapter.supports_layer_loop(language_model)

    def prefill(self, rows: Sequence[int], embeds: torch.Tensor) -> None:
        """Run one unit's prompts (embeds [n, L, H], no padding) into cache rows `rows`."""
        count, length, _ = embeds.shape
        if count != len(rows) or length > self.prompt_len:
            raise ValueError(
                f"prefill of {count} rows x {length} tokens into {self.prompt_len} slots"
            )
        last_hidden, key_values = hf_adapter.prefill(self.language_model, embeds)
        index = torch.tensor(list(rows), device=embeds.device)
        start = self.prompt_len - length
        self.slots.write(index, start, self.prompt_len, key_values)
        self.key_valid[index, start : self.prompt_len] = True
        self.next_position[index] = length
        self.hidden[index] = last_hidden

    def prefilled(self) -> torch.Tensor:
        """Last prompt hidden state of every row ([R, H]; zeros for rows never prefilled)."""
        self.slots.rewind(self.prompt_len)
        return self.hidden

    def step(self, embeds: torch.Tensor) -> torch.Tensor:
        """embeds [R, 1, H] of the tokens just chosen -> hidden [R, H] for the next choice."""
        if self.written >= self.cache_len:
            raise RuntimeError("KV cache is full")
        self.key_valid[:, self.written] = True
        self.written += 1
        positions = self.next_position
        self.next_position = positions + 1
        mask = self.key_valid[:, None, None, : self.written]
        step = hf_adapter.layer_loop_step if self.direct else hf_adapter.model_step
        return step(self.language_model, embeds, mask, positions, self.slots)
