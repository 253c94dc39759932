"""A checkpoint in DeepSeek's original layout, made from a transformers-format one.

Written from the upstream `janus` package's module tree (MultiModalityCausalLM:
`vision_model.vision_tower` = timm SigLIP with fused qkv and an attention-pooling head,
`aligner.layers` = Sequential(Linear, GELU, Linear), `gen_vision_model` = LlamaGen VQ with
`conv_blocks[i].res` and `mid[0..2]`, `gen_embed`, `gen_head`, `language_model` =
LlamaForCausalLM) and its files (config.json with `model_type: multi_modality`, sharded
pytorch_model-*.bin + index or one pytorch_model.bin, tokenizer.json, tokenizer_config.json,
special_tokens_map.json, preprocessor_config.json, processor_config.json), so the converter is
tested against the layout, not against its own inverse.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

TOWER = "vision_model.vision_tower."
_OTHERS = {  # transformers prefix -> upstream prefix
    "model.generation_embeddings.": "gen_embed.",
    "model.generation_head.proj_out.": "gen_head.output_mlp_projector.",
    "model.generation_head.vision_head.": "gen_head.vision_head.",
    "model.language_model.": "language_model.model.",
    "lm_head.": "language_model.lm_head.",
}


def _vision_name(name: str) -> str:
    name = TOWER + name.removeprefix("model.vision_model.")
    name = name.replace("embeddings.patch_embedding.", "patch_embed.proj.")
    name = name.replace("post_layernorm.", "norm.").replace("encoder.layers.", "blocks.")
    return name.replace(".layer_norm", ".norm").replace(
        ".self_attn.projection_layer.", ".attn.proj."
    )


def _vq_name(name: str) -> str:
    name = "gen_vision_model." + name.removeprefix("model.vqmodel.")
    name = re.sub(r"\.(down|up)\.(\d+)\.block\.", r".conv_blocks.\2.res.", name)
    name = re.sub(r"\.(down|up)\.(\d+)\.", r".conv_blocks.\2.", name)
    for index, part in enumerate(("block_1", "attn_1", "block_2")):
        name = name.replace(f".mid.{part}.", f".mid.{index}.")
    return name


def _aligner_name(name: str) -> str:
    """fc1 -> layers.0, hidden_layers.k -> layers.2k+2 (GELUs in between hold no tensors)."""
    prefix, _, rest = name.removeprefix("model.").partition(".")
    layer, _, kind = rest.rpartition(".")
    index = 0 if layer == "fc1" else 2 * int(layer.removeprefix("hidden_layers.")) + 2
    return f"{'aligner' if prefix == 'aligner' else 'gen_aligner'}.layers.{index}.{kind}"


def _original_name(name: str) -> str:
    if name.startswith("model.vision_model."):
        return _vision_name(name)
    if name.startswith("model.vqmodel."):
        return _vq_name(name)
    if name.startswith(("model.aligner.", "model.generation_aligner.")):
        return _aligner_name(name)
    for ours, theirs in _OTHERS.items():
        if name.startswith(ours):
            return theirs + name.removeprefix(ours)
    raise AssertionError(f"no original name for {name}")


def original_state_dict(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of the upstream model for a transformers Janus state dict."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        fused = name.startswith("model.vision_model.") and ".self_attn." in name
        if fused and ".q_proj." in name:  # timm fuses q, k and v into one qkv projection
            parts = [state[name.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"]
            out[_original_name(name).replace(".self_attn.q_proj.", ".attn.qkv.")] = torch.cat(parts)
        elif fused and (".k_proj." in name or ".v_proj." in name):
            continue
        elif name.endswith("position_embedding.weight"):
            out[TOWER + "pos_embed"] = tensor.unsqueeze(0).clone()  # timm keeps [1, N, D]
        else:
            out[_original_name(name)] = tensor
    # what the upstream model has and Janus never uses: SigLIP's pooling head, VQ usage counts
    width = out[TOWER + "norm.weight"].shape[0]
    for key, shape in {
        "latent": (1, 1, width),
        "q.weight": (width, width),
        "q.bias": (width,),
        "kv.weight": (2 * width, width),
        "kv.bias": (2 * width,),
        "proj.weight": (width, width),
        "proj.bias": (width,),
        "norm.weight": (width,),
        "norm.bias": (width,),
        "mlp.fc1.weight": (4 * width, width),
        "mlp.fc1.bias": (4 * width,),
        "mlp.fc2.weight": (width, 4 * width),
        "mlp.fc2.bias": (width,),
    }.items():
        out[f"{TOWER}attn_pool.{key}"] = torch.randn(shape, generator=generator)
    out["gen_vision_model.quantize.codebook_used"] = torch.zeros(65536)
    return out


def original_config(config: Any, *, vision_name: str, vq_name: str) -> dict[str, Any]:
    """config.json of the upstream model for a transformers JanusConfig. The tiny sizes are not
    those of a named upstream architecture, so they are spelled in params."""
    text, vision, vq = config.text_config, config.vision_config, config.vq_config
    return {
        "architectures": ["MultiModalityCausalLM"],
        "model_type": "multi_modality",
        "torch_dtype": "float32",
        "vision_config": {
            "cls": "CLIPVisionTower",
            "model_type": "vision",
            "params": {
                "image_size": vision.image_size,
                "model_name": vision_name,
                "select_feature": "same",
                "select_layer": -1,
                "width": vision.hidden_size,
                "layers": vision.num_hidden_layers,
                "heads": vision.num_attention_heads,
                "mlp_ratio": vision.mlp_ratio,
                "patch_size": vision.patch_size,
            },
        },
        "aligner_config": {
            "cls": "MlpProjector",
            "model_type": "aligner",
            "params": {
                "depth": vision.depth,
                "input_dim": vision.hidden_size,
                "n_embed": vision.projection_dim,
                "projector_type": "mlp_gelu",
            },
        },
        "gen_vision_config": {
            "cls": vq_name,
            "model_type": "gen_vision",
            "params": {
                "image_token_size": vq.num_embeddings,
                "n_embed": vq.embed_dim,
                "ch": vq.base_channels,
                "ch_mult": list(vq.channel_multiplier),
                "z_channels": vq.latent_channels,
                "num_res_blocks": vq.num_res_blocks,
            },
        },
        "gen_aligner_config": {
            "cls": "MlpProjector",
            "model_type": "gen_aligner",
            "params": {
                "depth": vq.num_hidden_layers,
                "input_dim": vq.embed_dim,
                "n_embed": vq.projection_dim,
                "projector_type": "mlp_gelu",
            },
        },
        "gen_head_config": {
            "cls": "vision_head",
            "model_type": "gen_head",
            "params": {
                "image_token_embed": vq.projection_dim,
                "image_token_size": vq.num_embeddings,
                "n_embed": vq.image_token_embed_dim,
            },
        },
        "language_config": {
            "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size,
            "max_position_embeddings": text.max_position_embeddings,
            "model_type": "llama",
            "num_attention_heads": text.num_attention_heads,
            "num_hidden_layers": text.num_hidden_layers,
            "num_key_value_heads": text.num_key_value_heads,
            "rms_norm_eps": text.rms_norm_eps,
            "torch_dtype": "float32",
            "vocab_size": text.vocab_size,
        },
    }


def _write_weights(tensors: dict[str, torch.Tensor], folder: Path, shards: int) -> None:
    if shards == 1:
        torch.save(tensors, folder / "pytorch_model.bin")
        return
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        shard = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = names[i::shards]
        torch.save({n: tensors[n] for n in part}, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def write_original(
    checkpoint: Path,
    folder: Path,
    *,
    shards: int = 2,
    vision_name: str = "siglip_tiny_test",
    vq_name: str = "VQ-tiny-test",
) -> Path:
    """Write the transformers-format `checkpoint` to `folder` in the original layout."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint)
    folder.mkdir(parents=True)
    state = load_file(str(checkpoint / "model.safetensors"))
    _write_weights(original_state_dict(state), folder, shards)
    raw = original_config(config, vision_name=vision_name, vq_name=vq_name)
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    shutil.copy(checkpoint / "tokenizer.json", folder / "tokenizer.json")
    saved = json.loads((checkpoint / "tokenizer_config.json").read_text())
    specials = {k: saved[k] for k in ("bos_token", "eos_token", "pad_token")}
    tags = ["<image_placeholder>", "<begin_of_image>", "<end_of_image>"]
    (folder / "special_tokens_map.json").write_text(
        json.dumps({**specials, "additional_special_tokens": tags})
    )
    tokenizer_config = {
        "add_bos_token": True,
        "bos_token": {"content": specials["bos_token"], "special": True},
        "eos_token": {"content": specials["eos_token"], "special": True},
        "model_max_length": 16384,
        "tokenizer_class": "LlamaTokenizerFast",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    image = json.loads((checkpoint / "processor_config.json").read_text())["image_processor"]
    preprocessor = {
        "background_color": image["background_color"],
        "do_normalize": True,
        "image_mean": image["image_mean"],
        "image_processor_type": "VLMImageProcessor",
        "image_size": image["size"]["height"],
        "image_std": image["image_std"],
        "min_size": image["min_size"],
        "processor_class": "VLChatProcessor",
        "rescale_factor": image["rescale_factor"],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    processor = {
        "add_special_token": False,
        "ignore_id": -100,
        "image_tag": "<image_placeholder>",
        "mask_prompt": True,
        "num_image_tokens": config.vision_config.num_image_tokens,
        "processor_class": "VLChatProcessor",
        "sft_format": "deepseek",
    }
    (folder / "processor_config.json").write_text(json.dumps(processor))
    return folder
