import json

import pytest
import torch

from janus import JanusEngine, JanusError, JanusLoadError
from janus.loading import resolve_device, resolve_dtype

YES, NO = (lambda: True), (lambda: False)


@pytest.mark.parametrize(
    "cuda,mps,expected", [(YES, YES, "cuda"), (NO, YES, "mps"), (NO, NO, "cpu"), (YES, NO, "cuda")]
)
def test_auto_device_prefers_cuda_then_mps_then_cpu(cuda, mps, expected):
    assert resolve_device("auto", cuda_available=cuda, mps_available=mps).type == expected


def test_forced_devices():
    assert resolve_device("cpu", cuda_available=YES) == torch.device("cpu")
    assert resolve_device("cuda:1", cuda_available=YES) == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(JanusLoadError, match="CUDA is not available"):
        resolve_device("cuda:0", cuda_available=NO)
    with pytest.raises(JanusLoadError, match="MPS is not available"):
        resolve_device("mps", mps_available=NO)
    with pytest.raises(JanusLoadError, match="unknown device"):
        resolve_device("tpu-please")


@pytest.mark.parametrize(
    "device,bf16,expected",
    [
        ("cuda", YES, torch.bfloat16),
        ("cuda", NO, torch.float16),
        ("cpu", YES, torch.float32),
        ("mps", YES, torch.float32),
    ],
)
def test_auto_dtype(device, bf16, expected):
    assert resolve_dtype("auto", torch.device(device), bf16_supported=bf16) is expected


@pytest.mark.parametrize(
    "name,expected",
    [
        ("float16", torch.float16),
        ("fp16", torch.float16),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("float32", torch.float32),
        ("torch.float32", torch.float32),
        (torch.float16, torch.float16),
    ],
)
def test_forced_dtype(name, expected):
    assert resolve_dtype(name, torch.device("cpu")) is expected


def test_unknown_dtype():
    with pytest.raises(JanusLoadError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))


def test_load_a_local_checkpoint(engine, tiny_checkpoint):
    assert engine.model_name == str(tiny_checkpoint)
    assert engine.device == torch.device("cpu")
    assert engine.dtype == torch.float32
    assert not engine.model.training
    assert engine.image_size == 64
    assert engine.tokens.num_image_tokens == 16


def test_missing_path_raises_one_clear_error(tmp_path):
    with pytest.raises(JanusLoadError) as caught:
        JanusEngine.load(str(tmp_path / "no-such-model"), device="cpu")
    message = str(caught.value)
    assert "does not exist" in message and "huggingface-cli download" in message
    assert isinstance(caught.value, JanusError) and not caught.value.transient


def test_a_directory_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(JanusLoadError, match=r"no config\.json"):
        JanusEngine.load(str(tmp_path), device="cpu")


def test_a_checkpoint_of_another_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(JanusLoadError, match="model_type='llama'"):
        JanusEngine.load(str(tmp_path), device="cpu")


def test_a_janus_config_without_weights(tmp_path, tiny_checkpoint):
    (tmp_path / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    with pytest.raises(
        JanusLoadError, match="could not load Janus checkpoint from local directory"
    ):
        JanusEngine.load(str(tmp_path), device="cpu")


@pytest.mark.parametrize(
    "hub_id", ["deepseek-community/Janus-Pro-1B", "janus-batch-tests/not-a-repo"]
)
def test_unreachable_hub_id_offline(hub_id):
    with pytest.raises(JanusLoadError) as caught:
        JanusEngine.load(hub_id, device="cpu")
    message = str(caught.value)
    assert f"hub id '{hub_id}'" in message
    assert f"huggingface-cli download {hub_id} --local-dir" in message
    assert "pass that directory as the model path" in message


def test_max_batch_rows_must_fit_a_guided_image(engine):
    with pytest.raises(JanusLoadError, match="max_batch_rows"):
        JanusEngine(engine.model, engine.processor, model_name="x", max_batch_rows=1)


def test_an_incomplete_original_deepseek_folder_says_what_it_lacks(tmp_path) -> None:
    """A complete one is converted on load (tests/janus/test_janus_convert.py)."""
    import json

    import pytest

    from janus import JanusEngine, JanusLoadError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "multi_modality"}))
    with pytest.raises(JanusLoadError, match=r"config\.json has no \['vision_config'"):
        JanusEngine.load(str(tmp_path), device="cpu", dtype="float32")
