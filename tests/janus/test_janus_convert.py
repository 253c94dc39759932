"""Original deepseek-ai checkpoints (`model_type: multi_modality`): converted to transformers'
format they hold the same weights, tokenizer and processor as the checkpoint they were made
from and give token-for-token the same captions and image tokens; a worker pointed at the
original folder converts once into a cache folder and reuses it; JanusFlow and checkpoints
that do not fit are refused with errors that say why."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
import torch
from safetensors.torch import load_file

from janus import CaptionRequest, GenerateRequest, JanusEngine, JanusLoadError
from janus.convert import convert_checkpoint
from janus.original import read_state_dict
from tests.janus.helpers import pattern_image
from tests.janus.original_layout import write_original


@pytest.fixture(scope="module")
def original_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint in the original layout, sharded like Janus-Pro-7B."""
    return write_original(tiny_checkpoint, tmp_path_factory.mktemp("original") / "Janus-tiny")


@pytest.fixture(scope="module")
def converted(original_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_checkpoint(original_dir, tmp_path_factory.mktemp("converted") / "out")


@pytest.fixture(scope="module")
def converted_engine(converted: Path) -> JanusEngine:
    return JanusEngine.load(str(converted), device="cpu", dtype="float32", max_batch_rows=16)


def _edited_copy(original_dir: Path, folder: Path, edit) -> Path:
    shutil.copytree(original_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_fixture_is_in_the_upstream_layout(original_dir: Path) -> None:
    state = read_state_dict(original_dir)
    assert not any(key.startswith(("model.", "lm_head")) for key in state)
    assert state["vision_model.vision_tower.blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert state["vision_model.vision_tower.pos_embed"].dim() == 3
    assert "gen_vision_model.decoder.conv_blocks.0.res.1.conv1.weight" in state
    assert "gen_vision_model.encoder.mid.1.q.weight" in state
    assert "aligner.layers.2.weight" in state and "gen_head.output_mlp_projector.bias" in state
    assert any(key.startswith("vision_model.vision_tower.attn_pool.") for key in state)
    assert len(list(original_dir.glob("pytorch_model-*-of-00002.bin"))) == 2


def test_converted_files_equal_the_transformers_original(
    tiny_checkpoint: Path, converted: Path
) -> None:
    from transformers import AutoTokenizer, JanusConfig

    ours, theirs = (
        load_file(str(converted / "model.safetensors")),
        load_file(str(tiny_checkpoint / "model.safetensors")),
    )
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)

    def config(path: Path) -> dict:
        return JanusConfig.from_pretrained(path).to_dict()

    assert config(converted) == config(tiny_checkpoint)
    for name in ("generation_config.json", "processor_config.json", "chat_template.jinja"):
        assert (converted / name).read_text() == (tiny_checkpoint / name).read_text(), name
    ours_tok, theirs_tok = (
        AutoTokenizer.from_pretrained(converted),
        AutoTokenizer.from_pretrained(tiny_checkpoint),
    )
    text = "<|User|>: A photo of a red fox.<image_placeholder>\n\n<|Assistant|>:"
    assert ours_tok(text).input_ids == theirs_tok(text).input_ids
    for attribute in ("bos_token", "eos_token", "pad_token", "image_token", "boi_token"):
        assert getattr(ours_tok, attribute) == getattr(theirs_tok, attribute), attribute


def test_converted_checkpoint_captions_and_generates_like_the_original(
    engine: JanusEngine, converted_engine: JanusEngine
) -> None:
    captions = [
        CaptionRequest(pattern_image(1), max_new_tokens=24),
        CaptionRequest(pattern_image(2), "What is in this picture?", max_new_tokens=24),
        CaptionRequest(pattern_image(3), "Describe this image in one sentence.", max_new_tokens=8),
    ]
    expected = [r.text for r in engine.caption(captions)]
    assert [r.text for r in converted_engine.caption(captions)] == expected
    assert len(set(expected)) == 3 and all(expected)  # the comparison is not trivial

    prompts = [
        GenerateRequest("a red fox in the snow", n=2, seed=7, cfg_weight=3.0),  # sampled
        GenerateRequest("a lighthouse at dusk, watercolor", n=1, seed=8, temperature=0),
        GenerateRequest("a cat on a table", n=1, seed=9, cfg_weight=1.0, temperature=0),
    ]
    expected_tokens = engine.generate_tokens(prompts)
    assert converted_engine.generate_tokens(prompts) == expected_tokens
    assert all(isinstance(tokens, list) for tokens in expected_tokens)
    assert len({tuple(t) for tokens in expected_tokens for t in tokens}) == 4


def test_a_worker_pointed_at_an_original_folder_converts_once_then_reuses(
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # one pytorch_model.bin, like Janus-Pro-1B
    source = write_original(tiny_checkpoint, tmp_path / "Janus-Pro-tiny", shards=1)
    monkeypatch.setattr(hub_constants, "HF_HOME", str(tmp_path / "hf-home"))
    with caplog.at_level(logging.INFO, logger="janus"):
        first = JanusEngine.load(str(source), device="cpu", dtype="float32")
    [copy] = [p for p in (tmp_path / "hf-home/janus-batch/converted").iterdir() if p.is_dir()]
    assert copy.name.startswith("Janus-Pro-tiny-")
    assert f"converting the original deepseek-ai checkpoint {source}" in caplog.text
    written = (copy / "model.safetensors").stat().st_mtime_ns

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="janus"):
        second = JanusEngine.load(str(source), device="cpu", dtype="float32")
    assert "converting" not in caplog.text
    assert f"reusing {copy}, the converted copy of the original checkpoint" in caplog.text
    assert (copy / "model.safetensors").stat().st_mtime_ns == written
    assert first.model_name == second.model_name == str(source)
    reference = load_file(str(tiny_checkpoint / "model.safetensors"))
    for name, tensor in second.model.state_dict().items():
        if name in reference:
            assert torch.equal(tensor, reference[name]), name


def test_janusflow_is_refused_with_a_clear_error(original_dir: Path, tmp_path: Path) -> None:
    def as_janusflow(config: dict) -> None:
        for part in ("gen_vision_config", "gen_aligner_config", "gen_head_config"):
            del config[part]
        config["vision_gen_enc_config"] = {"cls": "ShallowUViTEncoder", "params": {}}
        config["vision_gen_dec_config"] = {"cls": "ShallowUViTDecoder", "params": {}}

    flow = _edited_copy(original_dir, tmp_path / "JanusFlow-tiny", as_janusflow)
    with pytest.raises(JanusLoadError, match=r"is a JanusFlow checkpoint.*rectified-flow"):
        convert_checkpoint(flow, tmp_path / "out")
    with pytest.raises(JanusLoadError, match="JanusFlow"):
        JanusEngine.load(str(flow), device="cpu")
    assert not (tmp_path / "out").exists()


def test_checkpoints_that_do_not_convert_say_why(original_dir: Path, tmp_path: Path) -> None:
    def fewer_layers(config: dict) -> None:
        config["language_config"]["num_hidden_layers"] = 1

    folder = _edited_copy(original_dir, tmp_path / "fewer", fewer_layers)
    with pytest.raises(JanusLoadError, match=r"do not fit its config: unexpected model\.language"):
        convert_checkpoint(folder, tmp_path / "out1")

    def unknown_tower(config: dict) -> None:
        config["vision_config"]["params"] = {"model_name": "siglip_huge", "image_size": 64}

    folder = _edited_copy(original_dir, tmp_path / "unknown", unknown_tower)
    with pytest.raises(JanusLoadError, match="unknown vision tower 'siglip_huge'"):
        convert_checkpoint(folder, tmp_path / "out2")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(JanusLoadError, match="not an empty directory"):
        convert_checkpoint(original_dir, tmp_path / "taken")
