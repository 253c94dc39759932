"""The janus runtime's contract with transformers: every use of its internals, in one module.

The other modules of janus/ use only transformers' public surface: `from_pretrained`,
`save_pretrained`, the config classes (`JanusConfig`, `LlamaConfig`, `GenerationConfig`...),
`PreTrainedTokenizerFast`, the processor's `__call__`, `apply_chat_template` and `tokenizer`,
and a model's `device`, `dtype`, `config`, `generation_config` and `get_input_embeddings()`.
Everything else goes through the small functions and classes below.
tests/janus/test_transformers_contract.py checks each internal listed here on the installed
transformers, so a release that changes one fails that test with the internal's name.
Checked: tests/janus passes on transformers 5.24.0 and 5.25.0, and on 5.13.0 but for the
comparison with transformers' own image `generate` (broken there until 5.18); 5.5.0 cannot
caption the tiny checkpoint (see `JanusProcessor(num_image_tokens=...)` below).

Internals relied on, and why:

Cache (transformers.cache_utils)
- `StaticLayer(max_cache_len=...)`: base class of the preallocated KV layer (`SlotsCache`).
  The layer allocates `keys` / `values` itself ([rows, kv_heads, slots, head_dim]) and sets
  what `StaticLayer.lazy_initialization` would (`is_initialized`, `dtype`, `device`,
  `batch_size`, `num_heads`, `k_head_dim`, `v_head_dim`, `cumulative_length` as a tensor on
  the device, which `get_seq_length()` reports). It overrides
  `update(key_states, value_states, *args, **kwargs) -> (keys, values)` to write at its own
  offset and return only the slots written so far: prefill KV is copied in right-aligned,
  which `StaticLayer.update` cannot do.
- `Cache(layers=[...])`: wraps those layers in the object the attention layers call
  `cache.update(key_states, value_states, layer_idx, ...)` on.
- `DynamicCache(config=...)` and its `layers[i].keys` / `layers[i].values` after a forward:
  a unit's prompts are prefilled through a dynamic cache, then copied into the slots.
- The cache keyword of the text model's and decoder layers' `forward`: `cache` since 5.24,
  `past_key_values` before (that name warns a FutureWarning from 5.24 and goes in 5.40).
  `cache_keyword()` reads it from the signature, so both spellings work without a warning.

Llama text model (transformers.models.llama.modeling_llama)
- `LlamaModel.layers`, `.rotary_emb(hidden, position_ids=...)` (-> the (cos, sin) pair),
  `.norm` and `.config.num_hidden_layers`, and
  `LlamaDecoderLayer(hidden, attention_mask=, position_ids=, <cache>=, use_cache=,
  position_embeddings=) -> hidden`: with `decoder.LAYER_LOOP` a decode step calls the layers
  directly, the model forward minus its per-call bookkeeping (~10% of a CPU step), with the
  same arithmetic (tests/janus/test_janus_generate.py compares the two).
- A model forward returns `.last_hidden_state`, and passes a 4-D attention mask through
  unchanged to the attention function.
- `attn_implementation="sdpa"` (`LOAD_OPTIONS`): the decoder's 4-D mask is boolean
  (True = attend). SDPA masks with it; eager attention would add it as 0/1, and
  flash-attention-2 rejects it.
- `use_kernels=False` (`LOAD_OPTIONS`): from 5.25 `from_pretrained` swaps layers for hub
  kernels by default (the `kernels` package, fetched from the hub at load time); janus keeps
  transformers' own layers, whose arithmetic the tests pin, and loads offline.

Janus (transformers.models.janus)
- `JanusForConditionalGeneration.model.language_model`: the Llama text model alone.
- `.model.get_image_features(pixel_values).pooler_output`: vision tower + aligner, the image
  embeddings written into a caption prompt's image-placeholder slots.
- `.lm_head` (text logits; `.out_features` is the vocabulary size) and
  `.model.generation_head` (image-token logits; `.vision_head.out_features` is the codebook
  size).
- `.prepare_embeddings_for_image_generation(ids)`: embeddings of the image tokens fed back.
- `.decode_image_tokens(ids)`: VQ decoding to channels-LAST pixels in [-1, 1].
- `.model.vqmodel.quantize.quant_state_dims`: the image-token grid (tokens per image).
- `JanusVQVAEConfig.num_patches` and `.channel_multiplier`: the side of a decoded image.
- `JanusProcessor.image_start_token` (the begin-of-image string), `.num_image_tokens`, and
  `__call__(..., generation_mode="image")` (a prompt that ends in begin-of-image), returning
  `input_ids` (and `pixel_values` for images).
- `JanusProcessor(..., use_default_system_prompt=True, num_image_tokens=N)`: a processor
  expanding the image placeholder to N tokens, saved and loaded with the checkpoint. Before
  5.13 N was fixed at 576, so only 384-pixel checkpoints could caption (not the 64-pixel
  tiny checkpoint of the tests).
- `JanusImageProcessorPil` (top-level export): the image processor tiny checkpoints are saved
  with, which needs no torchvision.

Utilities
- `transformers.utils.logging.is_progress_bar_enabled / disable_progress_bar /
  enable_progress_bar`: silence the progress bar of `save_pretrained`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, StaticLayer

LOAD_OPTIONS: dict[str, Any] = {"attn_implementation": "sdpa", "use_kernels": False}
"""Keyword arguments of `from_pretrained` for a model janus runs (see the module docstring)."""

CACHE_KEYWORDS = ("cache", "past_key_values")
"""The cache argument of transformers' forwards, current name first."""

KeyValues = tuple[torch.Tensor, torch.Tensor]


# --- the parts of a JanusForConditionalGeneration ---------------------------------------


def text_model(model: Any) -> Any:
    """The Llama text model of a JanusForConditionalGeneration (no head)."""
    return model.model.language_model


def text_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Text-token logits [R, V] from last hidden states [R, H]."""
    logits: torch.Tensor = model.lm_head(hidden)
    return logits


def text_vocab_size(model: Any) -> int:
    return int(model.lm_head.out_features)


def image_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Image-token logits [R, codebook] from last hidden states [R, H]."""
    logits: torch.Tensor = model.model.generation_head(hidden)
    return logits


def image_vocab_size(model: Any) -> int:
    return int(model.model.generation_head.vision_head.out_features)


def image_token_embeddings(model: Any, image_tokens: torch.Tensor) -> torch.Tensor:
    """Input embeddings [..., H] of image tokens [...] (the generation embedding + aligner)."""
    embeds: torch.Tensor = model.prepare_embeddings_for_image_generation(image_tokens)
    return embeds


def decode_image_tokens(model: Any, image_tokens: torch.Tensor) -> torch.Tensor:
    """VQ-decode image tokens [B, N] to pixels [B, S, S, 3] (channels last, in [-1, 1])."""
    pixels: torch.Tensor = model.decode_image_tokens(image_tokens)
    return pixels


def image_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """Embeddings [N, H] of ONE image [1, 3, S, S], one per image-placeholder token."""
    features: torch.Tensor = model.model.get_image_features(pixel_values).pooler_output[0]
    return features


def image_token_grid(model: Any) -> tuple[int, int]:
    """(rows, columns) of the image-token grid of a generated image."""
    rows, columns = model.model.vqmodel.quantize.quant_state_dims
    return int(rows), int(columns)


def generated_image_side(config: Any) -> int:
    """Side in pixels of a decoded image: VQ patches x the decoder's upsampling."""
    vq = config.vq_config
    return int(vq.num_patches * 2 ** (len(vq.channel_multiplier) - 1))


# --- the processor ----------------------------------------------------------------------


def is_janus_processor(processor: object) -> bool:
    return hasattr(processor, "image_start_token") and hasattr(processor, "num_image_tokens")


def begin_of_image_token(processor: Any) -> str:
    """The begin-of-image token string (its id is what an image prompt ends with)."""
    return str(processor.image_start_token)


def encode_caption_prompt(
    processor: Any, prompt: str, image: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [L], pixel_values [1, 3, S, S]) of one prompt with one image placeholder."""
    encoded = processor(text=[prompt], images=[image], return_tensors="pt")
    return encoded["input_ids"][0], encoded["pixel_values"]


def encode_image_prompt(processor: Any, prompt: str) -> torch.Tensor:
    """input_ids [L] of an image-generation prompt (ends with begin-of-image)."""
    encoded = processor(text=[prompt], generation_mode="image", return_tensors="pt")
    ids: torch.Tensor = encoded["input_ids"][0]
    return ids


def janus_processor(
    image_processor: Any, tokenizer: Any, *, chat_template: str, num_image_tokens: int
) -> Any:
    """A JanusProcessor that prepends the default system prompt to captions."""
    from transformers import JanusProcessor

    return JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=chat_template,
        use_default_system_prompt=True,
        num_image_tokens=num_image_tokens,
    )


def pil_image_processor(size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """A Janus image processor working on PIL images (no torchvision needed)."""
    from transformers import JanusImageProcessorPil

    return JanusImageProcessorPil(
        size={"height": size, "width": size}, image_mean=list(mean), image_std=list(std)
    )


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' progress bars (e.g. "Writing model shards"), then restore the setting."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


# --- the text model's forward and its KV cache ------------------------------------------


@functools.cache
def _keyword_of(forward: Callable[..., Any]) -> str:
    parameters = inspect.signature(forward).parameters
    for name in CACHE_KEYWORDS:
        if name in parameters:
            return name
    raise TypeError(f"{forward.__qualname__} takes none of {CACHE_KEYWORDS}: no KV cache argument")


def cache_keyword(module: torch.nn.Module) -> str:
    """The name under which `module`'s forward takes its KV cache."""
    return _keyword_of(type(module).forward)


class _SlotsLayer(StaticLayer):
    """One layer's preallocated KV slots: prefill KV is copied in; steps append one slot."""

    def __init__(
        self,
        rows: int,
        heads: int,
        slots: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        super().__init__(max_cache_len=slots)
        self.slot_keys = torch.zeros((rows, heads, slots, head_dim), dtype=dtype, device=device)
        self.slot_values = torch.zeros_like(self.slot_keys)
        self.keys, self.values = self.slot_keys, self.slot_values
        self.dtype, self.device = dtype, device
        self.batch_size, self.num_heads = rows, heads
        self.k_head_dim = self.v_head_dim = head_dim
        self.cumulative_length: torch.Tensor = self.cumulative_length.to(device)
        self.is_initialized = True
        self.written = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.written, self.written + key_states.shape[-2]
        if end > self.max_cache_len:
            raise RuntimeError(f"KV cache overflow: {end} > {self.max_cache_len} slots")
        self.slot_keys[:, :, start:end] = key_states
        self.slot_values[:, :, start:end] = value_states
        self.written = end
        self.cumulative_length.fill_(end)
        return self.slot_keys[:, :, :end], self.slot_values[:, :, :end]


class SlotsCache:
    """`rows x slots` preallocated KV slots for every layer of a text model, as a `Cache`."""

    def __init__(self, language_model: Any, rows: int, slots: int):
        config = language_model.config
        heads = config.num_key_value_heads or config.num_attention_heads
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        weight = language_model.get_input_embeddings().weight
        self.hidden_size = int(config.hidden_size)
        self.dtype: torch.dtype = weight.dtype
        self.device: torch.device = weight.device
        self.layers = [
            _SlotsLayer(rows, heads, slots, head_dim, self.dtype, self.device)
            for _ in range(config.num_hidden_layers)
        ]
        self.cache = Cache(layers=list(self.layers))

    def write(
        self, rows: torch.Tensor, start: int, stop: int, key_values: Sequence[KeyValues]
    ) -> None:
        """Copy per-layer (keys, values) [n, kv_heads, stop - start, head_dim] into `rows`."""
        for layer, (keys, values) in zip(self.layers, key_values, strict=True):
            layer.slot_keys[rows, :, start:stop] = keys
            layer.slot_values[rows, :, start:stop] = values

    def rewind(self, written: int) -> None:
        """The next step writes slot `written` of every layer."""
        for layer in self.layers:
            layer.written = written


def _key_values(layer: object) -> KeyValues:
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise TypeError(f"a {type(layer).__name__} cache layer holds no keys/values tensors")
    return keys, values


def prefill(language_model: Any, embeds: torch.Tensor) -> tuple[torch.Tensor, list[KeyValues]]:
    """Run prompts (embeds [n, L, H], causal, no padding) from an empty cache.

    Returns the last hidden states [n, H] and each layer's (keys, values)
    [n, kv_heads, L, head_dim].
    """
    cache = DynamicCache(config=language_model.config)
    output = language_model(
        inputs_embeds=embeds, use_cache=True, **{cache_keyword(language_model): cache}
    )
    hidden: torch.Tensor = output.last_hidden_state[:, -1, :]
    return hidden, [_key_values(layer) for layer in cache.layers]


def supports_layer_loop(language_model: object) -> bool:
    """Whether `layer_loop_step` applies: a Llama text model with the parts it calls."""
    return type(language_model).__name__ == "LlamaModel" and all(
        hasattr(language_model, name) for name in ("layers", "rotary_emb", "norm")
    )


def layer_loop_step(
    language_model: Any,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    slots: SlotsCache,
) -> torch.Tensor:
    """One decode step through the decoder layers directly; returns hidden [R, H]."""
    layers = language_model.layers[: language_model.config.num_hidden_layers]
    cache_argument = {cache_keyword(layers[0]): slots.cache}
    hidden = embeds
    rotary = language_model.rotary_emb(hidden, position_ids=positions)
    for layer in layers:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            position_embeddings=rotary,
            **cache_argument,
        )
    last: torch.Tensor = language_model.norm(hidden)[:, -1, :]
    return last


def model_step(
    language_model: Any,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    slots: SlotsCache,
) -> torch.Tensor:
    """One decode step through the text model's own forward; returns hidden [R, H]."""
    output = language_model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{cache_keyword(language_model): slots.cache},
    )
    hidden: torch.Tensor = output.last_hidden_state[:, -1, :]
    return hidden
