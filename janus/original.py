"""DeepSeek's original Janus layout (`model_type: multi_modality`, the deepseek-ai/Janus-Pro-*
repos), read into transformers' Janus format: the config, and the weights renamed key by key.

The original model is `MultiModalityCausalLM` of the upstream `janus` package: a SigLIP tower
(`vision_model.vision_tower`, timm names, fused qkv), MLP aligners (`nn.Sequential` indices),
a LlamaGen VQ model (`gen_vision_model`), `gen_embed`, `gen_head` and a Llama language model.
Every tensor maps to exactly one transformers tensor (the fused qkv to three) except the
SigLIP attention-pooling head and the VQ codebook-usage counter, which Janus never uses.
JanusFlow (a rectified-flow generator, no VQ tokens) has no transformers counterpart: refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import JanusLoadError

ORIGINAL_MODEL_TYPE = "multi_modality"

VISION_TOWERS: dict[str, dict[str, Any]] = {
    # upstream janus/models/siglip_vit.py, SigLIP_MODEL_CONFIG
    "siglip_large_patch16_384": {
        "width": 1024,
        "layers": 24,
        "heads": 16,
        "mlp_ratio": 4.0,
        "patch_size": 16,
    },
}
"""Vision towers by upstream `model_name`; any other name must spell these sizes in params."""

VQ_MODELS: dict[str, dict[str, Any]] = {
    # upstream janus/models/vq_model.py: VQ_16 = ModelArgs defaults + Encoder/Decoder defaults
    "VQ-16": {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "z_channels": 256, "num_res_blocks": 2},
}
"""VQ models by upstream `cls`; any other cls must spell these sizes in params."""

_JANUSFLOW_KEYS = ("vision_gen_enc_config", "vision_gen_dec_config", "vision_und_enc_config")
_PARTS = (
    "vision_config",
    "aligner_config",
    "gen_vision_config",
    "gen_aligner_config",
    "gen_head_config",
    "language_config",
)
_WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a checkpoint folder; JanusLoadError when missing or unreadable."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise JanusLoadError(f"cannot read {str(path)!r}: {exc}") from None
    if not isinstance(config, dict):
        raise JanusLoadError(f"{str(path)!r} is not a JSON object")
    return config


def is_original(folder: str | Path) -> bool:
    """Whether `folder` holds a checkpoint in the original deepseek-ai layout."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        return False
    try:
        return read_config(path).get("model_type") == ORIGINAL_MODEL_TYPE
    except JanusLoadError:
        return False


def check_supported(config: dict[str, Any], where: str) -> None:
    """Refuse what cannot be converted: JanusFlow, or not the original layout at all."""
    if config.get("model_type") != ORIGINAL_MODEL_TYPE:
        raise JanusLoadError(
            f"{where} is not in the original deepseek-ai layout (model_type "
            f"{config.get('model_type')!r}, expected {ORIGINAL_MODEL_TYPE!r})"
        )
    if any(key in config for key in _JANUSFLOW_KEYS):
        raise JanusLoadError(
            f"{where} is a JanusFlow checkpoint: it generates images with a rectified-flow "
            "model (ShallowUViT encoder/decoder over an SDXL VAE), not Janus's VQ tokens, and "
            "transformers has no JanusFlow model. Only Janus and Janus-Pro convert."
        )
    missing = [key for key in _PARTS if key not in config]
    if missing:
        raise JanusLoadError(
            f"{where} is not a Janus or Janus-Pro checkpoint in the original deepseek-ai layout: "
            f"config.json has no {missing}"
        )


def _params(config: dict[str, Any], part: str) -> dict[str, Any]:
    params = config[part].get("params", {})
    return params if isinstance(params, dict) else {}


def _sizes(named: dict[str, dict[str, Any]], name: str, params: dict[str, Any], what: str):
    """The sizes of a named upstream architecture, or those spelled in params."""
    if name in named:
        return named[name]
    keys = next(iter(named.values())).keys()
    if all(key in params for key in keys):
        return {key: params[key] for key in keys}
    raise JanusLoadError(
        f"unknown {what} {name!r}: known are {sorted(named)}; another one must give "
        f"{sorted(keys)} in its params"
    )


def vision_config_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """JanusVisionConfig arguments of an original config (its tower and aligner)."""
    params = _params(config, "vision_config")
    if params.get("select_layer", -1) != -1:
        raise JanusLoadError(
            f"vision select_layer {params['select_layer']} is not supported (Janus uses -1)"
        )
    name = str(params.get("model_name", "siglip_large_patch16_384"))
    tower = _sizes(VISION_TOWERS, name, params, "vision tower")
    image_size = int(params.get("image_size", 384))
    aligner = _params(config, "aligner_config")
    return {
        "hidden_size": int(tower["width"]),
        "num_hidden_layers": int(tower["layers"]),
        "num_attention_heads": int(tower["heads"]),
        "mlp_ratio": float(tower["mlp_ratio"]),
        "patch_size": int(tower["patch_size"]),
        "image_size": image_size,
        "num_image_tokens": (image_size // int(tower["patch_size"])) ** 2,
        "projection_dim": int(aligner["n_embed"]),
        "depth": int(aligner.get("depth", 2)),
    }


def _vq_config(config: dict[str, Any]) -> dict[str, Any]:
    gen_vision = _params(config, "gen_vision_config")
    vq = _sizes(VQ_MODELS, str(config["gen_vision_config"].get("cls")), gen_vision, "VQ model")
    gen_aligner = _params(config, "gen_aligner_config")
    head = _params(config, "gen_head_config")
    # transformers uses one width for the generation aligner's output and the head's middle
    if int(gen_aligner["n_embed"]) != int(head["image_token_embed"]):
        raise JanusLoadError(
            "gen_aligner n_embed and gen_head image_token_embed differ "
            f"({gen_aligner['n_embed']} vs {head['image_token_embed']}): transformers' Janus "
            "has one width for both"
        )
    return {
        "embed_dim": int(gen_vision["n_embed"]),
        "num_embeddings": int(gen_vision["image_token_size"]),
        "base_channels": int(vq["ch"]),
        "channel_multiplier": [int(m) for m in vq["ch_mult"]],
        "latent_channels": int(vq["z_channels"]),
        "num_res_blocks": int(vq["num_res_blocks"]),
        "projection_dim": int(gen_aligner["n_embed"]),
        "num_hidden_layers": int(gen_aligner.get("depth", 2)),
        "image_token_embed_dim": int(head["n_embed"]),
    }


_TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
)


def janus_config(
    config: dict[str, Any],
    *,
    image_token_id: int,
    special_ids: dict[str, int | None] | None = None,
    tie_word_embeddings: bool = False,
):
    """transformers' JanusConfig for an original config.json (checked with check_supported)."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    check_supported(config, "config.json")
    language = config["language_config"]
    text_kwargs: dict[str, Any] = {key: language[key] for key in _TEXT_KEYS if key in language}
    text_kwargs.update(special_ids or {})
    text = LlamaConfig(**text_kwargs, tie_word_embeddings=tie_word_embeddings)
    return JanusConfig(
        text_config=text,
        vision_config=JanusVisionConfig(**vision_config_kwargs(config)),
        vq_config=JanusVQVAEConfig(**_vq_config(config)),
        image_token_id=image_token_id,
        tie_word_embeddings=tie_word_embeddings,
        architectures=["JanusForConditionalGeneration"],
    )


def stored_dtype(config: dict[str, Any]) -> str:
    """The dtype the checkpoint's config names (float32 when it names none)."""
    name = config.get("torch_dtype") or config.get("dtype") or "float32"
    return str(name).removeprefix("torch.")


# --- weights --------------------------------------------------------------------------


def _aligner(prefix: str) -> Callable[[re.Match[str]], str]:
    """MlpProjector's Sequential(Linear, GELU, Linear, ...) -> fc1, hidden_layers.0, ..."""

    def rename(match: re.Match[str]) -> str:
        index = int(match.group(1))
        if index % 2:
            raise JanusLoadError(f"unexpected aligner layer {match.group(0)!r}")
        return f"{prefix}.fc1." if index == 0 else f"{prefix}.hidden_layers.{index // 2 - 1}."

    return rename


_T = r"^vision_model\.vision_tower\."
_V = "model.vision_model."
_LAYER = _V + r"encoder.layers.\1."
_G = r"^gen_vision_model\."
_VQ = "model.vqmodel."
_Replacement = str | Callable[[re.Match[str]], str]
_TABLE: list[tuple[str, _Replacement]] = [
    # SigLIP tower (timm names) -> JanusVisionModel
    (_T + r"pos_embed$", _V + "embeddings.position_embedding.weight"),
    (_T + r"patch_embed\.proj\.", _V + "embeddings.patch_embedding."),
    (_T + r"norm\.", _V + "post_layernorm."),
    (_T + r"blocks\.(\d+)\.norm([12])\.", _LAYER + r"layer_norm\2."),
    (_T + r"blocks\.(\d+)\.attn\.qkv\.", _LAYER + "self_attn.qkv."),
    (_T + r"blocks\.(\d+)\.attn\.proj\.", _LAYER + "self_attn.projection_layer."),
    (_T + r"blocks\.(\d+)\.mlp\.", _LAYER + "mlp."),
    # aligners
    (r"^aligner\.layers\.(\d+)\.", _aligner("model.aligner")),
    (r"^gen_aligner\.layers\.(\d+)\.", _aligner("model.generation_aligner")),
    # LlamaGen VQ model: conv_blocks -> down/up, res -> block, mid.0/1/2 -> named
    (_G + r"encoder\.conv_blocks\.(\d+)\.res\.", _VQ + r"encoder.down.\1.block."),
    (_G + r"encoder\.conv_blocks\.", _VQ + "encoder.down."),
    (_G + r"decoder\.conv_blocks\.(\d+)\.res\.", _VQ + r"decoder.up.\1.block."),
    (_G + r"decoder\.conv_blocks\.", _VQ + "decoder.up."),
    (_G + r"(encoder|decoder)\.mid\.0\.", _VQ + r"\1.mid.block_1."),
    (_G + r"(encoder|decoder)\.mid\.1\.", _VQ + r"\1.mid.attn_1."),
    (_G + r"(encoder|decoder)\.mid\.2\.", _VQ + r"\1.mid.block_2."),
    (_G, _VQ),
    # image-token embedding and head
    (r"^gen_embed\.", "model.generation_embeddings."),
    (r"^gen_head\.output_mlp_projector\.", "model.generation_head.proj_out."),
    (r"^gen_head\.vision_head\.", "model.generation_head.vision_head."),
    # Llama
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
]
_RULES = [(re.compile(pattern), replacement) for pattern, replacement in _TABLE]
_UNUSED = re.compile(_T + r"attn_pool\.|" + _G + r"quantize\.codebook_used$")
"""SigLIP's attention-pooling head (Janus reads the patch features) and the VQ usage counter."""


def rename(key: str) -> str | None:
    """The transformers name of an original tensor, None for tensors Janus never uses."""
    if _UNUSED.search(key):
        return None
    for pattern, replacement in _RULES:
        if pattern.search(key):
            return pattern.sub(replacement, key, count=1)
    raise JanusLoadError(f"unknown tensor {key!r} in the original checkpoint")


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original tensors -> transformers tensors: renamed, qkv split, position table 2-D."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = rename(key)
        if name is None:
            continue
        if ".self_attn.qkv." in name:
            for part, chunk in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                converted[name.replace(".qkv.", f".{part}_proj.")] = chunk.clone()
        elif name.endswith("position_embedding.weight") and tensor.dim() == 3:
            converted[name] = tensor.squeeze(0)
        else:
            converted[name] = tensor
    return converted


def weight_files(folder: Path) -> list[Path]:
    """The weight files of an original checkpoint (one file, or the shards of an index)."""
    for name in _WEIGHT_FILES:
        index = folder / f"{name}.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            return [folder / shard for shard in sorted(set(weight_map.values()))]
        if (folder / name).is_file():
            return [folder / name]
    raise JanusLoadError(
        f"{str(folder)!r} has no weights ({' or '.join(_WEIGHT_FILES)}, or their .index.json)"
    )


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an original checkpoint, memory-mapped where the format allows."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(path)))
        else:
            state.update(_load_pickle(path))
    return state


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model*.bin: memory-mapped (zip format), else read whole (legacy format)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=True)
