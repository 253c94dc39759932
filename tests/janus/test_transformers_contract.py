"""The runtime's contract with transformers: every internal that janus/hf_adapter.py relies on.

A transformers release that renames, removes or reshapes one of them fails here, with the
internal's name in the test id and in the message, instead of failing a user's job. The list
follows the adapter's module docstring; keep the two in step.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import pytest
import torch
import transformers
from transformers.cache_utils import Cache, DynamicCache, StaticLayer

import janus.decoder
from janus import CaptionRequest, GenerateRequest, JanusEngine, hf_adapter

from .helpers import pattern_image


def _parameters(function: Callable[..., object]) -> set[str]:
    return set(inspect.signature(function).parameters)


def _require(condition: object, internal: str, detail: str = "") -> None:
    assert condition, (
        f"transformers {transformers.__version__}: `{internal}` is not what janus/hf_adapter.py "
        f"relies on{': ' + detail if detail else ''}"
    )


def _require_parameters(function: Callable[..., object], internal: str, *names: str) -> None:
    missing = sorted(set(names) - _parameters(function))
    _require(not missing, internal, f"no parameter(s) {missing} in {inspect.signature(function)}")


# --- class-level internals (no model needed) --------------------------------------------


def check_static_layer() -> None:
    internal = "transformers.cache_utils.StaticLayer"
    _require_parameters(StaticLayer.__init__, f"{internal}.__init__", "max_cache_len")
    _require_parameters(StaticLayer.update, f"{internal}.update", "key_states", "value_states")
    layer = StaticLayer(max_cache_len=4)
    _require(layer.max_cache_len == 4, f"{internal}.max_cache_len")
    _require(isinstance(layer.cumulative_length, torch.Tensor), f"{internal}.cumulative_length")
    _require(layer.is_initialized is False, f"{internal}.is_initialized")
    _require(hasattr(layer, "keys") and hasattr(layer, "values"), f"{internal}.keys/.values")


def check_cache() -> None:
    _require_parameters(Cache.__init__, "transformers.cache_utils.Cache(layers=...)", "layers")
    _require_parameters(
        Cache.update,
        "transformers.cache_utils.Cache.update",
        "key_states",
        "value_states",
        "layer_idx",
    )


def check_dynamic_cache() -> None:
    _require_parameters(
        DynamicCache.__init__, "transformers.cache_utils.DynamicCache(config=...)", "config"
    )
    _require(hasattr(DynamicCache(), "layers"), "transformers.cache_utils.DynamicCache.layers")


def check_llama_signatures() -> None:
    from transformers.models.llama.modeling_llama import (
        LlamaDecoderLayer,
        LlamaModel,
        LlamaRotaryEmbedding,
    )

    for cls in (LlamaModel, LlamaDecoderLayer):
        names = _parameters(cls.forward)
        _require(
            any(name in names for name in hf_adapter.CACHE_KEYWORDS),
            f"{cls.__name__}.forward cache argument",
            f"none of {hf_adapter.CACHE_KEYWORDS} in {inspect.signature(cls.forward)}",
        )
    _require_parameters(
        LlamaModel.forward, "LlamaModel.forward", "inputs_embeds", "attention_mask", "use_cache"
    )
    _require_parameters(
        LlamaDecoderLayer.forward,
        "LlamaDecoderLayer.forward",
        "hidden_states",
        "attention_mask",
        "position_ids",
        "use_cache",
        "position_embeddings",
    )
    _require_parameters(
        LlamaRotaryEmbedding.forward, "LlamaRotaryEmbedding.forward", "x", "position_ids"
    )


def check_janus_classes() -> None:
    from transformers import JanusForConditionalGeneration, JanusModel

    generation = "JanusForConditionalGeneration"
    _require_parameters(
        JanusForConditionalGeneration.prepare_embeddings_for_image_generation,
        f"{generation}.prepare_embeddings_for_image_generation",
        "inputs",
    )
    _require_parameters(
        JanusForConditionalGeneration.decode_image_tokens,
        f"{generation}.decode_image_tokens",
        "image_tokens",
    )
    _require_parameters(
        JanusModel.get_image_features, "JanusModel.get_image_features", "pixel_values"
    )


def check_janus_vq_config() -> None:
    from transformers import JanusConfig, JanusVQVAEConfig

    config = JanusConfig(vq_config=JanusVQVAEConfig(channel_multiplier=[1, 2]))
    _require(
        isinstance(getattr(config.vq_config, "num_patches", None), int),
        "JanusVQVAEConfig.num_patches",
    )
    _require(
        list(config.vq_config.channel_multiplier) == [1, 2], "JanusVQVAEConfig.channel_multiplier"
    )


def check_pil_image_processor() -> None:
    _require(hasattr(transformers, "JanusImageProcessorPil"), "transformers.JanusImageProcessorPil")
    processor = hf_adapter.pil_image_processor(64, mean=(0.5,) * 3, std=(0.5,) * 3)
    pixels = processor(images=[pattern_image(3)], return_tensors="pt")["pixel_values"]
    _require(tuple(pixels.shape) == (1, 3, 64, 64), "JanusImageProcessorPil(size=...)")


def check_progress_bar_switches() -> None:
    from transformers.utils import logging as hf_logging

    for name in ("is_progress_bar_enabled", "disable_progress_bar", "enable_progress_bar"):
        _require(callable(getattr(hf_logging, name, None)), f"transformers.utils.logging.{name}")
    before = hf_logging.is_progress_bar_enabled()
    with hf_adapter.quiet_progress_bars():
        _require(not hf_logging.is_progress_bar_enabled(), "disable_progress_bar")
    _require(hf_logging.is_progress_bar_enabled() == before, "enable_progress_bar")


CLASS_CHECKS = {
    "StaticLayer": check_static_layer,
    "Cache": check_cache,
    "DynamicCache": check_dynamic_cache,
    "Llama forward signatures": check_llama_signatures,
    "Janus model methods": check_janus_classes,
    "JanusVQVAEConfig": check_janus_vq_config,
    "JanusImageProcessorPil": check_pil_image_processor,
    "progress bar switches": check_progress_bar_switches,
}


@pytest.mark.parametrize("internal", list(CLASS_CHECKS))
def test_internal_exists_with_the_expected_signature(internal: str) -> None:
    CLASS_CHECKS[internal]()


# --- internals of a loaded (tiny) model and processor -----------------------------------


def test_the_janus_model_parts(engine: JanusEngine) -> None:
    model = engine.model
    with torch.inference_mode():
        text = hf_adapter.text_model(model)
        _require(
            hf_adapter.supports_layer_loop(text),
            "JanusModel.language_model (a LlamaModel with .layers/.rotary_emb/.norm)",
            type(text).__name__,
        )
        hidden = torch.zeros((2, text.config.hidden_size))
        vocab = hf_adapter.text_vocab_size(model)
        _require(hf_adapter.text_logits(model, hidden).shape == (2, vocab), "lm_head")
        codebook = hf_adapter.image_vocab_size(model)
        _require(
            hf_adapter.image_logits(model, hidden).shape == (2, codebook),
            "JanusModel.generation_head(.vision_head)",
        )
        grid = hf_adapter.image_token_grid(model)
        _require(grid == (4, 4), "JanusModel.vqmodel.quantize.quant_state_dims", str(grid))
        tokens = torch.arange(16).unsqueeze(0) % codebook
        embeds = hf_adapter.image_token_embeddings(model, tokens)
        _require(
            embeds.shape == (1, 16, text.config.hidden_size),
            "prepare_embeddings_for_image_generation",
            str(tuple(embeds.shape)),
        )
        pixels = hf_adapter.decode_image_tokens(model, tokens)
        _require(
            pixels.shape == (1, 64, 64, 3),
            "decode_image_tokens (channels last)",
            str(tuple(pixels.shape)),
        )
        _require(
            hf_adapter.generated_image_side(model.config) == 64, "JanusVQVAEConfig.num_patches"
        )
        image = pattern_image(4)
        _, pixel_values = hf_adapter.encode_caption_prompt(
            engine.processor, "<image_placeholder>", image
        )
        features = hf_adapter.image_features(model, pixel_values)
        _require(
            features.shape == (16, text.config.hidden_size),
            "JanusModel.get_image_features(...).pooler_output",
            str(tuple(features.shape)),
        )


def test_the_model_is_loaded_with_sdpa_and_without_hub_kernels(engine: JanusEngine) -> None:
    model = engine.model
    _require(
        getattr(model, "use_kernels", None) is False,
        "from_pretrained(use_kernels=False)",
        f"use_kernels={getattr(model, 'use_kernels', None)!r}",
    )
    implementation = getattr(model.config, "_attn_implementation", None)
    _require(
        implementation == hf_adapter.LOAD_OPTIONS["attn_implementation"],
        'from_pretrained(attn_implementation="sdpa")',
        f"config._attn_implementation={implementation!r}",
    )


def test_the_janus_processor(engine: JanusEngine) -> None:
    from transformers import JanusProcessor

    _require_parameters(JanusProcessor.__init__, "JanusProcessor.__init__", "num_image_tokens")
    processor = engine.processor
    _require(
        processor.num_image_tokens == 16,
        "JanusProcessor.num_image_tokens (saved and loaded with the checkpoint)",
        f"{processor.num_image_tokens} for the 64-pixel tiny checkpoint",
    )
    _require(hf_adapter.is_janus_processor(processor), "JanusProcessor.image_start_token")
    boi = hf_adapter.begin_of_image_token(processor)
    _require(boi == "<begin_of_image>", "JanusProcessor.image_start_token", boi)
    ids = hf_adapter.encode_image_prompt(processor, "a red fox")
    boi_id = processor.tokenizer.convert_tokens_to_ids(boi)
    _require(
        ids.dim() == 1 and int(ids[-1]) == boi_id,
        'JanusProcessor.__call__(generation_mode="image")',
        "the prompt should end with begin-of-image",
    )


def test_the_cache_keyword_and_the_slots_layer(engine: JanusEngine) -> None:
    text = hf_adapter.text_model(engine.model)
    for module in (text, text.layers[0]):
        keyword = hf_adapter.cache_keyword(module)
        _require(keyword in hf_adapter.CACHE_KEYWORDS, f"{type(module).__name__}.forward cache")
    slots = hf_adapter.SlotsCache(text, rows=2, slots=5)
    layer = slots.layers[0]
    _require(isinstance(layer, StaticLayer) and layer.is_initialized, "StaticLayer subclassing")
    slots.rewind(1)
    keys = torch.ones_like(layer.slot_keys[:, :, :1])
    returned_keys, _ = slots.cache.update(keys, keys * 2, 0)
    _require(
        returned_keys.shape[2] == 2 and torch.equal(layer.slot_values[:, :, 1:2], keys * 2),
        "Cache.update -> layer.update",
        "the cache should route a layer's update to that layer",
    )


def test_a_boolean_4d_mask_hides_the_empty_slots(engine: JanusEngine) -> None:
    """sdpa attention with the decoder's boolean mask (True = attend), in both step paths."""
    model = engine.model
    text = hf_adapter.text_model(model)
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(torch.tensor([[1, 5, 9, 14]]))
        expected, _ = hf_adapter.prefill(text, embeds)
        outputs = []
        for step in (hf_adapter.layer_loop_step, hf_adapter.model_step):
            for fill in (0.0, 1000.0):
                slots = hf_adapter.SlotsCache(text, rows=1, slots=6)
                _, key_values = hf_adapter.prefill(text, embeds[:, :3])
                slots.write(torch.tensor([0]), 2, 5, key_values)
                for layer in slots.layers:
                    layer.slot_keys[:, :, :2] = fill
                    layer.slot_values[:, :, :2] = fill
                slots.rewind(5)
                mask = torch.tensor([[False, False, True, True, True, True]])[:, None, None, :]
                positions = torch.tensor([[3]])
                outputs.append(step(text, embeds[:, 3:], mask, positions, slots))
    _require(
        all(torch.equal(outputs[0], other) for other in outputs[1:]),
        'attn_implementation="sdpa" with a boolean 4-D mask',
        "masked slots changed the result, or the layer loop differs from the forward",
    )
    _require(
        torch.allclose(outputs[0], expected, atol=1e-4),
        'attn_implementation="sdpa" with a boolean 4-D mask',
        "a decode step differs from the same tokens prefilled",
    )


# --- no deprecated calls ----------------------------------------------------------------


def _from_transformers(warning: warnings.WarningMessage) -> bool:
    text = str(warning.message)
    return (
        "transformers" in warning.filename
        or "transformers" in text
        or "past_key_values" in text
        or "will be removed in version" in text
    )


def test_a_tiny_run_emits_no_deprecation_warning_from_transformers(
    tiny_checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = JanusEngine.load(
            str(tiny_checkpoint), device="cpu", dtype="float32", max_batch_rows=4
        )
        captions = engine.caption([CaptionRequest(pattern_image(5), max_new_tokens=4)])
        images = engine.generate([GenerateRequest("a red fox", temperature=0.0)])
        monkeypatch.setattr(janus.decoder, "LAYER_LOOP", False)  # the model's own forward too
        images += engine.generate([GenerateRequest("a red fox", temperature=0.0)])
    assert captions[0].ok and all(result.ok for result in images)
    deprecations = sorted(
        {
            f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}"
            for w in caught
            if issubclass(w.category, (DeprecationWarning, FutureWarning)) and _from_transformers(w)
        }
    )
    assert not deprecations, (
        f"transformers {transformers.__version__} deprecates something janus/hf_adapter.py "
        "calls:\n" + "\n".join(deprecations)
    )
