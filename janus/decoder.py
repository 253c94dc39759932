"""A fixed-shape decoder over the Janus language model with a preallocated KV cache.

Each unit (one caption row, or the conditional + unconditional rows of one image) is
prefilled on its own at its exact prompt length, with a causal mask and no padding; its keys
and values are then placed right-aligned in a cache of `rows x (prompt_len + new_tokens)`
slots. Decoding steps run all rows together; a boolean mask hides the empty left slots and
each row continues from its own positions. Prefill shapes depend on the unit alone and step t
always reads `prompt_len + t + 1` slots of `rows` rows, so a row's arithmetic never depends on
the other rows of the pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache, DynamicCache, StaticLayer

LAYER_LOOP = True
"""Decode steps call the Llama layers directly (the model's own forward minus its per-call
bookkeeping, ~10% of a CPU step); False, or a non-Llama text model, uses the full forward."""


class _SlotsLayer(StaticLayer):
    """A preallocated cache layer: prefill KV is copied in; steps append one slot for all rows."""

    def __init__(self, rows: int, heads: int, slots: int, head_dim: int, dtype, device):
        super().__init__(max_cache_len=slots)
        self.keys = torch.zeros((rows, heads, slots, head_dim), dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.dtype, self.device = dtype, device
        self.batch_size, self.num_heads = rows, heads
        self.k_head_dim = self.v_head_dim = head_dim
        self.cumulative_length = self.cumulative_length.to(device)
        self.is_initialized = True
        self.written = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start, end = self.written, self.written + key_states.shape[-2]
        if end > self.max_cache_len:
            raise RuntimeError(f"KV cache overflow: {end} > {self.max_cache_len} slots")
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        self.written = end
        self.cumulative_length.fill_(end)
        return self.keys[:, :, :end], self.values[:, :, :end]


class StaticDecoder:
    """Per-unit prefill, then one step per new token over all rows; returns last hidden states."""

    def __init__(self, language_model, rows: int, prompt_len: int, new_tokens: int):
        config = language_model.config
        heads = config.num_key_value_heads or config.num_attention_heads
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        weight = language_model.get_input_embeddings().weight
        self.language_model = language_model
        self.rows = rows
        self.prompt_len = prompt_len
        self.cache_len = prompt_len + new_tokens
        self.hidden_size = config.hidden_size
        self.layers = [
            _SlotsLayer(rows, heads, self.cache_len, head_dim, weight.dtype, weight.device)
            for _ in range(config.num_hidden_layers)
        ]
        self.cache = Cache(layers=list(self.layers))
        self.key_valid = torch.zeros((rows, self.cache_len), dtype=torch.bool, device=weight.device)
        self.next_position = torch.zeros((rows, 1), dtype=torch.long, device=weight.device)
        self.hidden = torch.zeros(
            (rows, self.hidden_size), dtype=weight.dtype, device=weight.device
        )
        self.written = prompt_len
        self.direct = (
            LAYER_LOOP
            and type(language_model).__name__ == "LlamaModel"
            and all(hasattr(language_model, name) for name in ("layers", "rotary_emb", "norm"))
        )

    def prefill(self, rows: Sequence[int], embeds: torch.Tensor) -> None:
        """Run one unit's prompts (embeds [n, L, H], no padding) into cache rows `rows`."""
        count, length, _ = embeds.shape
        if count != len(rows) or length > self.prompt_len:
            raise ValueError(
                f"prefill of {count} rows x {length} tokens into {self.prompt_len} slots"
            )
        cache = DynamicCache(config=self.language_model.config)
        output = self.language_model(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
        index = torch.tensor(list(rows), device=embeds.device)
        start = self.prompt_len - length
        for layer, source in zip(self.layers, cache.layers):
            layer.keys[index, :, start : self.prompt_len] = source.keys
            layer.values[index, :, start : self.prompt_len] = source.values
        self.key_valid[index, start : self.prompt_len] = True
        self.next_position[index] = length
        self.hidden[index] = output.last_hidden_state[:, -1, :]

    def prefilled(self) -> torch.Tensor:
        """Last prompt hidden state of every row ([R, H]; zeros for rows never prefilled)."""
        for layer in self.layers:
            layer.written = self.prompt_len
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
        model = self.language_model
        if not self.direct:
            output = model(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=self.cache,
                use_cache=True,
            )
            return output.last_hidden_state[:, -1, :]
        hidden = embeds
        rotary = model.rotary_emb(hidden, position_ids=positions)
        for layer in model.layers[: model.config.num_hidden_layers]:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=self.cache,
                use_cache=True,
                position_embeddings=rotary,
            )
        return model.norm(hidden)[:, -1, :]
