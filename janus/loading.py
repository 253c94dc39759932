"""Device and dtype resolution, and loading a Janus checkpoint (hub id or local directory)."""

from __future__ import annotations

import json
import logging
import pathlib
import re
import time
from collections.abc import Callable

import torch

from . import hf_adapter
from .errors import JanusLoadError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "deepseek-community/Janus-Pro-1B"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(
    device: str | torch.device = "auto",
    *,
    cuda_available: Callable[[], bool] = torch.cuda.is_available,
    mps_available: Callable[[], bool] = _mps_available,
) -> torch.device:
    """ "auto" picks cuda, then mps, then cpu; anything else ("cuda:1", "cpu") is taken as given."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        if cuda_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise JanusLoadError(f"unknown device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not cuda_available():
        raise JanusLoadError(f"device {device!r} requested but CUDA is not available")
    if resolved.type == "mps" and not mps_available():
        raise JanusLoadError(f"device {device!r} requested but MPS is not available")
    return resolved


def _cuda_bf16_supported() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_dtype(
    dtype: str | torch.dtype,
    device: torch.device,
    *,
    bf16_supported: Callable[[], bool] = _cuda_bf16_supported,
) -> torch.dtype:
    """ "auto" is bf16 on cuda (fp16 where bf16 is unsupported) and fp32 on cpu and mps."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise JanusLoadError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
        return dtype
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if bf16_supported() else torch.float16
        return torch.float32
    if name not in _DTYPES:
        raise JanusLoadError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return _DTYPES[name]


def _local_hint(model: str) -> str:
    name = model if model.count("/") == 1 else DEFAULT_MODEL
    return (
        f"To use a local copy, run `huggingface-cli download {name} --local-dir "
        f"/models/{name.split('/')[-1]}` (`hf download` in recent huggingface_hub) on a machine "
        "with internet access, then pass that directory as the model path."
    )


def _check_local_dir(path: pathlib.Path) -> None:
    if not path.is_dir():
        raise JanusLoadError(f"model path {str(path)!r} is not a directory of a Janus checkpoint")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise JanusLoadError(
            f"{str(path)!r} is not a Janus checkpoint in transformers format (no config.json). "
            "Expected the layout of deepseek-community/Janus-Pro-1B (JanusForConditionalGeneration "
            "+ JanusProcessor); the deepseek-ai/Janus-Pro-* repos use a different layout."
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise JanusLoadError(f"cannot read {str(config_file)!r}: {exc}") from None
    if model_type != "janus":
        raise JanusLoadError(
            f"{str(path)!r} is not a Janus checkpoint (config.json model_type={model_type!r}, "
            "expected 'janus'). Point at a transformers-format Janus-Pro checkpoint such as "
            "deepseek-community/Janus-Pro-1B."
        )


def _source(model: str) -> tuple[str, bool]:
    """Return (what to pass to from_pretrained, is_local) or raise JanusLoadError."""
    path = pathlib.Path(model).expanduser()
    if path.exists():
        from . import convert, original

        if path.is_dir() and original.is_original(path):
            # deepseek-ai's own layout: converted once into a cache folder, then reused
            return str(convert.converted_copy(path)), True
        _check_local_dir(path)
        return str(path), True
    looks_like_path = model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1
    if looks_like_path or not _HUB_ID.match(model):
        raise JanusLoadError(
            f"model path {model!r} does not exist (and is not a hub id). " + _local_hint(model)
        )
    return model, False


def load_checkpoint(model: str, device: torch.device, dtype: torch.dtype):
    """Load (JanusForConditionalGeneration, processor) in eval mode on `device` in `dtype`."""
    from transformers import AutoConfig, AutoProcessor, JanusForConditionalGeneration

    source, is_local = _source(model)
    where = f"local directory {source!r}" if is_local else f"hub id {source!r}"
    started = time.perf_counter()
    try:
        config = AutoConfig.from_pretrained(source)
        if getattr(config, "model_type", None) != "janus":
            raise JanusLoadError(
                f"{where} is not a Janus checkpoint (model_type={config.model_type!r}, "
                "expected 'janus')"
            )
        processor = AutoProcessor.from_pretrained(source)
        # sdpa attention and no hub kernels: see hf_adapter.LOAD_OPTIONS.
        network: torch.nn.Module = JanusForConditionalGeneration.from_pretrained(
            source, dtype=dtype, **hf_adapter.LOAD_OPTIONS
        )
    except JanusLoadError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, HF hub errors...
        reason = " ".join(str(exc).split()).rstrip(".")
        if "multi_modality" in reason:
            raise JanusLoadError(
                f"{where} is in the original deepseek-ai layout (model_type 'multi_modality', "
                "trust_remote_code), not transformers' Janus format: download it and point at "
                "the folder (converted once on load), convert it with `janus-batch model "
                "convert SRC DST`, or use deepseek-community/Janus-Pro-1B or -7B."
            ) from exc
        hint = (
            ""
            if is_local
            else " Offline, hub unreachable, or no such repository? " + _local_hint(source)
        )
        raise JanusLoadError(
            f"could not load Janus checkpoint from {where}: {reason}.{hint}"
        ) from exc
    if not hf_adapter.is_janus_processor(processor):
        raise JanusLoadError(f"{where} has no JanusProcessor (got {type(processor).__name__})")
    network = network.to(device).eval()
    network.requires_grad_(False)
    logger.info(
        "loaded %s on %s (%s) in %.2fs",
        where,
        device,
        str(dtype).removeprefix("torch."),
        time.perf_counter() - started,
    )
    return network, processor
