"""`janus-batch model convert SRC DST` and `janus-batch model info PATH` on tiny checkpoints in
both layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import invoke
from tests.janus.original_layout import write_original


@pytest.fixture(scope="module")
def original_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint in the original layout (one pytorch_model.bin, like Janus-Pro-1B)."""
    folder = tmp_path_factory.mktemp("original") / "Janus-tiny"
    return write_original(tiny_checkpoint, folder, shards=1)


def _info(*args: object, env: dict[str, str] | None = None) -> dict:
    run = invoke(env or {}, "model", "info", *args, "--json")
    assert run.exit_code == 0, run.stderr
    return json.loads(run.stdout)


def test_convert_writes_a_checkpoint_the_engine_loads(original_dir: Path, tmp_path: Path) -> None:
    from janus import GenerateRequest, JanusEngine

    run = invoke({}, "model", "convert", original_dir, tmp_path / "converted")
    assert run.exit_code == 0, run.stderr
    assert f"converted {original_dir} to transformers' Janus format" in run.stdout
    assert json.loads((tmp_path / "converted" / "config.json").read_text())["model_type"] == "janus"
    engine = JanusEngine.load(str(tmp_path / "converted"), device="cpu", dtype="float32")
    [result] = engine.generate([GenerateRequest("a fox", n=1, seed=3)])
    assert result.ok and result.images[0].image.size == (64, 64)


def test_convert_refuses_janusflow_and_a_used_destination(
    original_dir: Path, tmp_path: Path
) -> None:
    flow = tmp_path / "JanusFlow"
    flow.mkdir()
    config = {"model_type": "multi_modality", "vision_gen_enc_config": {}}
    (flow / "config.json").write_text(json.dumps(config))
    run = invoke({}, "model", "convert", flow, tmp_path / "out")
    assert run.exit_code == 4
    assert "JanusFlow checkpoint" in run.stderr and "rectified-flow" in run.stderr
    run = invoke({}, "model", "convert", original_dir, original_dir)
    assert run.exit_code == 4 and "is not an empty directory" in run.stderr


def test_info_is_the_same_for_both_layouts_and_follows_the_settings(
    tiny_checkpoint: Path, original_dir: Path
) -> None:
    transformers_layout = _info(tiny_checkpoint, "--rows", 2, "--rows", 8)
    original_layout = _info(original_dir, "--rows", 2, "--rows", 8)
    assert transformers_layout["layout"] == "transformers"
    assert original_layout["layout"] == "original"
    for summary in (transformers_layout, original_layout):
        del summary["name"], summary["layout"]
    assert transformers_layout == original_layout
    assert transformers_layout["parameters"] == 3_555_851
    assert transformers_layout["weight_bytes"] == 4 * 3_555_851
    assert [m["rows"] for m in transformers_layout["memory"]] == [2, 8]
    eight = transformers_layout["memory"][1]
    per_position = transformers_layout["kv_bytes_per_position"]
    assert eight["caption_kv"] == 8 * transformers_layout["caption_positions"] * per_position
    assert eight["total"] == transformers_layout["weight_bytes"] + eight["caption_kv"]

    env = {"JANUS_BATCH_BATCH_ROWS": "12", "JANUS_BATCH_MAX_NEW_TOKENS": "200"}
    defaults = _info(tiny_checkpoint, "--dtype", "bfloat16", env=env)
    assert [m["rows"] for m in defaults["memory"]] == [4, 8, 12, 16, 32]
    assert defaults["caption_positions"] == 192 + 256  # 200 new tokens, bucketed to 256
    assert (defaults["dtype"], defaults["stored_dtype"]) == ("bfloat16", "float32")
    assert defaults["weight_bytes"] == 2 * 3_555_851


def test_info_prints_a_table_and_refuses_what_is_not_a_checkpoint(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = invoke({}, "model", "info", tiny_checkpoint, "--rows", 16)
    assert run.exit_code == 0, run.stderr
    assert "Janus checkpoint in transformers format" in run.stdout
    assert "BATCH_ROWS" in run.stdout and run.stdout.splitlines()[-1].split()[0] == "16"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    run = invoke({}, "model", "info", tmp_path)
    assert run.exit_code == 4 and "is not a Janus checkpoint" in run.stderr
