"""Model info: parameters, dtype and memory per BATCH_ROWS computed from a checkpoint's config
match what the loaded model holds and what the engine allocates; README's sizing table is the
same function applied to Janus-Pro-1B's and -7B's published configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from janus import CaptionRequest, GenerateRequest, JanusEngine, hf_adapter
from janus.model_info import (
    DEFAULT_ROWS,
    PROMPT_BUCKET,
    describe,
    info_from_config,
    report,
    sizing_table,
)
from janus.original import janus_config
from janus_batch.settings import DEFAULT_MAX_NEW_TOKENS

README = Path(__file__).resolve().parents[2] / "README.md"


def _published(hidden: int, intermediate: int, layers: int, heads: int) -> dict[str, Any]:
    """config.json of deepseek-ai/Janus-Pro-1B and -7B (original layout); they differ only in
    the language model's sizes and the widths that follow it."""
    return {
        "architectures": ["MultiModalityCausalLM"],
        "model_type": "multi_modality",
        "torch_dtype": "bfloat16",
        "vision_config": {
            "cls": "CLIPVisionTower",
            "model_type": "vision",
            "params": {
                "image_size": 384,
                "model_name": "siglip_large_patch16_384",
                "select_feature": "same",
                "select_layer": -1,
            },
        },
        "aligner_config": {
            "cls": "MlpProjector",
            "model_type": "aligner",
            "params": {
                "depth": 2,
                "input_dim": 1024,
                "n_embed": hidden,
                "projector_type": "mlp_gelu",
            },
        },
        "gen_vision_config": {
            "cls": "VQ-16",
            "model_type": "gen_vision",
            "params": {"image_token_size": 16384, "n_embed": 8},
        },
        "gen_aligner_config": {
            "cls": "MlpProjector",
            "model_type": "gen_aligner",
            "params": {"depth": 2, "input_dim": 8, "n_embed": hidden, "projector_type": "mlp_gelu"},
        },
        "gen_head_config": {
            "cls": "vision_head",
            "model_type": "gen_head",
            "params": {"image_token_embed": hidden, "image_token_size": 16384, "n_embed": hidden},
        },
        "language_config": {
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "max_position_embeddings": 16384,
            "model_type": "llama",
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "num_key_value_heads": heads,
            "torch_dtype": "bfloat16",
            "vocab_size": 102400,
        },
    }


PUBLISHED = {
    "Janus-Pro-1B": _published(hidden=2048, intermediate=5632, layers=24, heads=16),
    "Janus-Pro-7B": _published(hidden=4096, intermediate=11008, layers=30, heads=32),
}


@pytest.fixture(scope="module")
def tiny_info(tiny_checkpoint: Path):
    return describe(tiny_checkpoint)


def test_parameters_and_weights_equal_the_loaded_model(
    tiny_info, engine: JanusEngine, tiny_checkpoint: Path
) -> None:
    parameters = list(engine.model.parameters())
    assert tiny_info.parameters == sum(p.numel() for p in parameters) == 3_555_851
    assert tiny_info.weight_bytes == sum(p.numel() * p.element_size() for p in parameters)
    on_disk = (tiny_checkpoint / "model.safetensors").stat().st_size
    assert 0 < on_disk - tiny_info.weight_bytes < 64 * 1024  # the safetensors header
    assert (tiny_info.layout, tiny_info.stored_dtype, tiny_info.dtype) == (
        "transformers",
        "float32",
        "float32",
    )
    half = describe(tiny_checkpoint, dtype="bfloat16")
    assert (half.dtype, half.weight_bytes) == ("bfloat16", tiny_info.weight_bytes // 2)


def test_kv_estimate_equals_the_cache_the_engine_allocates(tiny_info, engine: JanusEngine) -> None:
    language_model = hf_adapter.text_model(engine.model)
    caption_positions = sum(tiny_info.caption_positions(DEFAULT_MAX_NEW_TOKENS))
    image_positions = sum(tiny_info.image_positions())
    for rows in (2, 5):
        memory = tiny_info.memory(rows, DEFAULT_MAX_NEW_TOKENS)
        for positions, estimate in (
            (caption_positions, memory.caption_kv),
            (image_positions, memory.image_kv),
        ):
            cache = hf_adapter.SlotsCache(language_model, rows, positions)
            allocated = sum(
                layer.slot_keys.nbytes + layer.slot_values.nbytes for layer in cache.layers
            )
            assert estimate == allocated
        assert memory.total == tiny_info.weight_bytes + max(memory.caption_kv, memory.image_kv)


def test_the_engines_passes_fit_the_estimated_positions(tiny_info, engine: JanusEngine) -> None:
    assert engine.prompt_bucket == PROMPT_BUCKET
    image = Image.new("RGB", (640, 480), "white")
    for question in ("Describe this image.", "Describe this image in one sentence, briefly."):
        [unit] = engine.prepare(CaptionRequest(image, question, max_new_tokens=100))
        prompt, new = tiny_info.caption_positions(100)
        assert unit.new_len == new == 128
        assert unit.prompt_len <= prompt  # the budget holds the default questions
    for prompt_text in (
        "a red fox",
        "a watercolor painting of a lighthouse at dusk, highly detailed",
    ):
        [unit] = engine.prepare(GenerateRequest(prompt_text, n=1, seed=1))
        assert unit.prompt_len + engine.tokens.num_image_tokens == sum(tiny_info.image_positions())


def test_report_names_every_number(tiny_info) -> None:
    text = report(tiny_info, [2, 16], 128)
    assert "parameters    3,555,851 (3.56 M)" in text
    assert "dtype         float32 (stored float32)" in text
    assert "1.0 KiB per row and position (2 layers x keys+values x 4 heads x 16 x 4 bytes)" in text
    assert "caption pass  192 prompt + 128 new = 320 positions per row" in text
    assert "image pass    64 prompt + 16 image tokens = 80 positions per row" in text
    assert [line.split()[0] for line in text.splitlines()[-2:]] == ["2", "16"]


def test_readme_sizing_table_comes_from_the_published_configs() -> None:
    infos = [
        info_from_config(
            janus_config(config, image_token_id=0),
            name=name,
            layout="original",
            stored_dtype="bfloat16",
        )
        for name, config in PUBLISHED.items()
    ]
    one_b, seven_b = infos
    # the per-position cost the README derived by hand: layers x 2 x hidden x 2 bytes
    assert one_b.kv_bytes_per_position == 24 * 2 * 2048 * 2
    assert seven_b.kv_bytes_per_position == 30 * 2 * 4096 * 2
    assert one_b.caption_positions(128) == (704, 128) and one_b.image_positions() == (64, 576)
    table = sizing_table(infos, DEFAULT_ROWS, DEFAULT_MAX_NEW_TOKENS)
    assert table in README.read_text(), f"README's sizing table should read:\n{table}"
