"""Requests and results at the runtime's boundary: frozen dataclasses, validated on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from .errors import JanusRequestError
from .seeds import check_seed


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise JanusRequestError(message)


def _check_seed(seed: int) -> None:
    try:
        check_seed(seed)
    except ValueError as exc:
        raise JanusRequestError(str(exc)) from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class CaptionRequest:
    """Answer `question` about `image`; temperature 0 is greedy, else top-p sampling from `seed`."""

    image: Image.Image
    question: str = "Describe this image."
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.question, str), "question must be a string")
        _check(
            _is_int(self.max_new_tokens) and self.max_new_tokens >= 1,
            f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}",
        )
        _check(
            _is_number(self.temperature) and self.temperature >= 0,
            f"temperature must be a finite number >= 0, got {self.temperature!r}",
        )
        _check(
            _is_number(self.top_p) and 0 < self.top_p <= 1,
            f"top_p must be in (0, 1], got {self.top_p!r}",
        )
        _check_seed(self.seed)


@dataclass(frozen=True)
class CaptionResult:
    """The caption of one request, or the reason it failed."""

    text: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class GenerateRequest:
    """Draw `n` images for `prompt`; image k is sampled from `derive_seed(seed, k)`.

    `cfg_weight` is the classifier-free guidance weight (1 = no guidance), temperature 0 is
    argmax, `top_k` / `top_p` optionally restrict sampling.
    """

    prompt: str
    n: int = 1
    cfg_weight: float = 5.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.prompt, str), "prompt must be a string")
        _check(_is_int(self.n) and self.n >= 1, f"n must be an integer >= 1, got {self.n!r}")
        _check(
            _is_number(self.cfg_weight),
            f"cfg_weight must be a finite number, got {self.cfg_weight!r}",
        )
        _check(
            _is_number(self.temperature) and self.temperature >= 0,
            f"temperature must be a finite number >= 0, got {self.temperature!r}",
        )
        _check(
            self.top_k is None or (_is_int(self.top_k) and self.top_k >= 1),
            f"top_k must be None or an integer >= 1, got {self.top_k!r}",
        )
        _check(
            self.top_p is None or (_is_number(self.top_p) and 0 < self.top_p <= 1),
            f"top_p must be None or in (0, 1], got {self.top_p!r}",
        )
        _check_seed(self.seed)

    @property
    def guided(self) -> bool:
        """Whether an unconditional row is needed (cfg_weight != 1)."""
        return float(self.cfg_weight) != 1.0


@dataclass(frozen=True)
class GeneratedImage:
    """One image; `GenerateRequest(prompt, n=1, seed=self.seed)` regenerates it alone."""

    image: Image.Image
    seed: int
    index: int
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class GenerateResult:
    """The images of one request in index order, or the reason it failed."""

    images: tuple[GeneratedImage, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
