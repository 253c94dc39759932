"""Finding the checkpoint for the main job: a local folder, the Hugging Face cache, or the hub."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def locate_model(model: str, timeout: float = 5.0) -> tuple[bool, str]:
    """Whether `model` can be loaded here, and how: (True, how) or (False, why not)."""
    path = Path(model).expanduser()
    if path.exists():
        if (path / "config.json").is_file():
            return True, f"local checkpoint {path}"
        return False, f"{path} exists but holds no config.json (not a transformers checkpoint)"
    if "/" not in model or model.startswith((".", "/", "~")):
        return False, f"no such directory: {model}"
    try:
        from huggingface_hub import HfApi, snapshot_download
    except ImportError:
        return False, "huggingface_hub is not installed (pip install 'janus-batch[model]')"
    try:
        snapshot_download(model, local_files_only=True)
        return True, f"{model} from the local Hugging Face cache"
    except Exception as err:
        log.debug("%s is not in the Hugging Face cache: %s", model, err)
    if os.environ.get("HF_HUB_OFFLINE") in {"1", "true", "True"}:
        return False, f"{model} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    try:
        HfApi().model_info(model, timeout=timeout)
        return True, f"{model} from the Hugging Face hub (downloaded on first use)"
    except Exception as err:
        return False, f"the Hugging Face hub cannot be reached for {model} ({type(err).__name__})"
