import pytest
import torch
from safetensors.torch import load_file

from janus import GenerateRequest, JanusEngine, make_tiny_checkpoint


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, tiny_checkpoint):
    again = make_tiny_checkpoint(tmp_path / "again", image_size=64, seed=0)
    other = make_tiny_checkpoint(tmp_path / "other", image_size=64, seed=1)
    first = load_file(tiny_checkpoint / "model.safetensors")
    second = load_file(again / "model.safetensors")
    third = load_file(other / "model.safetensors")
    assert first.keys() == second.keys() == third.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)
    assert (tiny_checkpoint / "tokenizer.json").read_text() == (
        again / "tokenizer.json"
    ).read_text()


def test_checkpoint_has_the_janus_processor_and_generation_config(engine):
    tokenizer = engine.processor.tokenizer
    assert tokenizer.padding_side == "left"
    assert (
        tokenizer.image_token == "<image_placeholder>" and tokenizer.boi_token == "<begin_of_image>"
    )
    assert engine.model.config.image_token_id == tokenizer.convert_tokens_to_ids(
        "<image_placeholder>"
    )
    assert engine.model.generation_config.generation_kwargs["boi_token_id"] == engine.tokens.boi
    assert (
        engine.model.lm_head.weight.data_ptr()
        != engine.model.get_input_embeddings().weight.data_ptr()
    )
    ids = tokenizer("hello").input_ids
    assert ids[0] == tokenizer.bos_token_id


def test_image_size_must_be_a_multiple_of_the_patch(tmp_path):
    with pytest.raises(ValueError):
        make_tiny_checkpoint(tmp_path / "bad", image_size=70)


def test_the_384_checkpoint_generates_384x384_images(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "tiny384", image_size=384)
    engine = JanusEngine.load(str(path), device="cpu", dtype="float32", max_batch_rows=2)
    assert engine.tokens.num_image_tokens == 576 and engine.image_size == 384
    [result] = engine.generate([GenerateRequest("a red fox", temperature=0.0)])
    [image] = result.images
    assert image.image.size == (384, 384) and image.image.mode == "RGB"
    assert len(image.tokens) == 576 and len(set(image.tokens)) > 10
