"""janus: the Janus-Pro model runtime of janus-batch (captioning and image generation).

    from janus import JanusEngine, CaptionRequest, GenerateRequest
    engine = JanusEngine.load("deepseek-community/Janus-Pro-1B", device="auto", dtype="auto")
    [result] = engine.generate([GenerateRequest("a red fox in the snow", n=4, seed=7)])

It imports torch, transformers, tokenizers, numpy and pillow only; it knows nothing of
queues, SQL or object storage.
"""

from .engine import JanusEngine
from .errors import (
    JanusError,
    JanusImageError,
    JanusLoadError,
    JanusRequestError,
    JanusRuntimeError,
)
from .schemas import CaptionRequest, CaptionResult, GeneratedImage, GenerateRequest, GenerateResult
from .seeds import derive_seed
from .tiny import make_tiny_checkpoint

__all__ = [
    "CaptionRequest",
    "CaptionResult",
    "GenerateRequest",
    "GenerateResult",
    "GeneratedImage",
    "JanusEngine",
    "JanusError",
    "JanusImageError",
    "JanusLoadError",
    "JanusRequestError",
    "JanusRuntimeError",
    "derive_seed",
    "make_tiny_checkpoint",
]
