"""Original deepseek-ai Janus checkpoints in transformers' format: `convert_checkpoint(src,
dst)` writes the weights, config, generation config, tokenizer and processor that
`JanusEngine.load` reads; `converted_copy(src)` does it once into a cache folder and reuses it.

The cache lives under the Hugging Face home (`$HF_HOME/janus-batch/converted/`, by default
`~/.cache/huggingface/janus-batch/converted/`), one folder per source folder and content
(a changed source converts again). A file lock keeps several worker processes of one machine
from converting the same checkpoint twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from . import hf_adapter, original
from .errors import JanusLoadError
from .model_info import empty_model
from .tiny import CHAT_TEMPLATE

logger = logging.getLogger(__name__)

CONVERTER_VERSION = 1
"""Part of every cache folder's name: a converter that writes differently converts again."""

PAD_TOKEN = "<\uff5c\u2581pad\u2581\uff5c>"
"""The pad token of DeepSeek's tokenizer (upstream VLChatProcessor's pad_tag)."""

_IMAGE_TAGS = {  # transformers' tokenizer attribute -> upstream processor_config key, default
    "image_token": ("image_tag", "<image_placeholder>"),
    "boi_token": ("image_start_tag", "<begin_of_image>"),
    "eoi_token": ("image_end_tag", "<end_of_image>"),
}


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise JanusLoadError(f"cannot read {str(path)!r}: {exc}") from None
    return data if isinstance(data, dict) else {}


def _token(value: Any) -> str | None:
    """A special token as tokenizer files spell it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _tokenizer(src: Path, processor_config: dict[str, Any]):
    """DeepSeek's tokenizer.json as is, with its special tokens and Janus's image tokens."""
    from transformers import PreTrainedTokenizerFast

    if not (src / "tokenizer.json").is_file():
        raise JanusLoadError(f"{str(src)!r} has no tokenizer.json")
    spelled = {**_json(src / "special_tokens_map.json"), **_json(src / "tokenizer_config.json")}
    tokens = {name: _token(spelled.get(name)) for name in ("bos_token", "eos_token", "pad_token")}
    tokens["pad_token"] = tokens["pad_token"] or processor_config.get("pad_tag") or PAD_TOKEN
    image_tokens = {
        name: str(processor_config.get(key, default))
        for name, (key, default) in _IMAGE_TAGS.items()
    }
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(src / "tokenizer.json"),
        **{name: token for name, token in tokens.items() if token},
        extra_special_tokens=image_tokens,
        padding_side="left",
        model_max_length=int(spelled.get("model_max_length", 16384)),
    )
    vocab = tokenizer.get_vocab()
    absent = [t for t in [*tokens.values(), *image_tokens.values()] if t and t not in vocab]
    if absent:
        raise JanusLoadError(f"the tokenizer of {str(src)!r} has no {absent}")
    return tokenizer


def _processor(src: Path, config: dict[str, Any], processor_config: dict[str, Any], tokenizer):
    vision = config["vision_config"].get("params", {})
    image = _json(src / "preprocessor_config.json")
    size = int(image.get("image_size", vision.get("image_size", 384)))
    image_processor = hf_adapter.pil_image_processor(
        size, mean=image.get("image_mean", (0.5, 0.5, 0.5)), std=image.get("image_std", (0.5,) * 3)
    )
    tokens = processor_config.get(
        "num_image_tokens", original.vision_config_kwargs(config)["num_image_tokens"]
    )
    return hf_adapter.janus_processor(
        image_processor, tokenizer, chat_template=CHAT_TEMPLATE, num_image_tokens=int(tokens)
    )


def generation_config(tokenizer):
    """What image generation needs: special ids, begin-of-image, default guidance 5."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        guidance_scale=5.0,
        generation_kwargs={"boi_token_id": tokenizer.convert_tokens_to_ids(tokenizer.boi_token)},
    )


def _check_tensors(config, state: dict[str, torch.Tensor], where: str) -> None:
    """Every tensor transformers' Janus expects, with its shape, and no other."""
    expected = {k: tuple(v.shape) for k, v in empty_model(config).state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    found = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k}" for k in sorted(expected.keys() - found.keys())]
    problems += [f"unexpected {k}" for k in sorted(found.keys() - expected.keys())]
    problems += [
        f"{k} is {found[k]}, expected {expected[k]}"
        for k in sorted(expected.keys() & found.keys())
        if found[k] != expected[k]
    ]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise JanusLoadError(
            f"the weights of {where} do not fit its config: {'; '.join(problems[:5])}{more}"
        )


def convert_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Write the original-layout checkpoint `src` to `dst` (absent or empty) in transformers'
    format; returns `dst`. JanusLoadError says what cannot be converted and why."""
    src, dst = Path(src), Path(dst)
    where = repr(str(src))
    if not src.is_dir():
        raise JanusLoadError(f"{where} is not a directory")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise JanusLoadError(f"{str(dst)!r} exists and is not an empty directory")
    config = original.read_config(src)
    original.check_supported(config, where)
    processor_config = _json(src / "processor_config.json")
    tokenizer = _tokenizer(src, processor_config)
    processor = _processor(src, config, processor_config, tokenizer)
    state = original.convert_state_dict(original.read_state_dict(src))
    janus_config = original.janus_config(
        config,
        image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
        special_ids={
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        tie_word_embeddings="lm_head.weight" not in state,
    )
    _check_tensors(janus_config, state, where)
    dtypes = Counter(t.dtype for t in state.values() if t.is_floating_point())
    janus_config.dtype = dtypes.most_common(1)[0][0] if dtypes else torch.float32
    from huggingface_hub import save_torch_state_dict

    dst.mkdir(parents=True, exist_ok=True)
    save_torch_state_dict(state, dst, metadata={"format": "pt"})
    janus_config.save_pretrained(dst)
    generation_config(tokenizer).save_pretrained(dst)
    with hf_adapter.quiet_progress_bars():
        processor.save_pretrained(dst)
    return dst


def default_cache_root() -> Path:
    """Where converted copies go: $HF_HOME/janus-batch/converted (read when called)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "janus-batch" / "converted"


def _fingerprint(src: Path) -> str:
    """Changes when the folder, a file's name, size or modification time, or the converter do."""
    digest = hashlib.sha256(f"{CONVERTER_VERSION}\0{src}\n".encode())
    for path in sorted(p for p in src.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def converted_copy(src: str | Path, cache_root: str | Path | None = None) -> Path:
    """The transformers-format copy of the original checkpoint `src`: converted on first use
    (logged), then reused. Concurrent callers on one machine wait for one conversion."""
    from filelock import FileLock

    src = Path(src).expanduser().resolve()
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    target = root / f"{src.name}-{_fingerprint(src)}"
    if not (target / "config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{target}.lock"):
            if not (target / "config.json").is_file():
                _convert_into(src, target)
                return target
    logger.info("reusing %s, the converted copy of the original checkpoint %s", target, src)
    return target


def _convert_into(src: Path, target: Path) -> None:
    logger.info(
        "converting the original deepseek-ai checkpoint %s to transformers' format in %s "
        "(once: later loads reuse it)",
        src,
        target,
    )
    started = time.perf_counter()
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        convert_checkpoint(src, partial)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("converted %s in %.1fs", src, time.perf_counter() - started)
