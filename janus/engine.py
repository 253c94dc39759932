"""JanusEngine: a loaded Janus checkpoint that captions and generates in packed batches.

An output depends only on its request and the checkpoint: each request's prompt is prefilled
on its own, decoding steps always run `max_batch_rows` rows (dummies fill the gaps) over a
bucketed prompt length, each row samples from its own generator, and each image is VQ-decoded
alone. So a request gives the same tokens, text and PNG bytes alone or in any batch, and
image k of a request is regenerated alone by `GenerateRequest(prompt, n=1,
seed=derive_seed(seed, k))`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import torch

from .caption import CaptionUnit, prepare_caption, run_caption_pass
from .errors import JanusLoadError, JanusRequestError, JanusRuntimeError
from .generate import ImageUnit, decode_image, prepare_images, run_image_pass
from .loading import DEFAULT_MODEL, load_checkpoint, resolve_device, resolve_dtype
from .packing import pack
from .prompts import TokenIds
from .schemas import CaptionRequest, CaptionResult, GeneratedImage, GenerateRequest, GenerateResult

logger = logging.getLogger(__name__)

SeededTokens = tuple[int, tuple[int, ...]]
"""(seed, image tokens) of one generated image."""

PassHook = Callable[[str, int, int], None]
"""Called after each forward pass with (kind, units in the pass, rows used by real units)."""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class JanusEngine:
    """Caption and generate with one Janus checkpoint; see the module docstring for guarantees."""

    def __init__(
        self,
        model,
        processor,
        *,
        model_name: str,
        max_batch_rows: int = 16,
        prompt_bucket: int = 64,
    ):
        if max_batch_rows < 2:
            raise JanusLoadError(
                f"max_batch_rows must be >= 2 (a guided image uses 2 rows), got {max_batch_rows}"
            )
        if prompt_bucket < 1:
            raise JanusLoadError(f"prompt_bucket must be >= 1, got {prompt_bucket}")
        self.model = model
        self.processor = processor
        self.model_name = model_name
        self.max_batch_rows = max_batch_rows
        self.prompt_bucket = prompt_bucket
        self.tokens = TokenIds.from_checkpoint(model, processor)
        self.max_positions = int(model.config.text_config.max_position_embeddings)
        self.forward_passes = 0
        self.on_pass: PassHook | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        max_batch_rows: int = 16,
    ) -> JanusEngine:
        """Load a hub id or a local transformers-format directory; raises JanusLoadError."""
        resolved_device = resolve_device(device)
        resolved_dtype = resolve_dtype(dtype, resolved_device)
        network, processor = load_checkpoint(str(model), resolved_device, resolved_dtype)
        return cls(network, processor, model_name=str(model), max_batch_rows=max_batch_rows)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def image_size(self) -> int:
        """Side in pixels of generated images (384 for Janus-Pro)."""
        return self.tokens.image_size

    def caption(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        """One result per request, in request order; a bad image fails only its own request."""
        _check_types(requests, CaptionRequest)
        results: list[CaptionResult | None] = [None] * len(requests)
        units: list[CaptionUnit] = []
        with self._lock, torch.inference_mode():
            for i, request in enumerate(requests):
                try:
                    unit = prepare_caption(self.processor, i, request, self.prompt_bucket)
                    self._check_length(unit.prompt_len + unit.new_len)
                    units.append(unit)
                except Exception as exc:  # broad on purpose: only this request fails
                    logger.info("caption request %d failed: %s", i, _describe(exc))
                    results[i] = CaptionResult(error=_describe(exc))
            for batch in pack(
                units, capacity=self.max_batch_rows, rows=lambda u: 1, key=lambda u: u.shape_key
            ):
                started = time.perf_counter()
                texts = self._run(
                    run_caption_pass,
                    self.model,
                    self.processor,
                    self.tokens,
                    batch,
                    self.max_batch_rows,
                )
                self._record("caption", len(batch), len(batch), started)
                for unit, text in zip(batch, texts, strict=True):
                    results[unit.index] = CaptionResult(text=text)
        return [r if r is not None else CaptionResult(error="not processed") for r in results]

    def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        """One result per request, in request order, each with its n images in index order."""
        results = []
        with self._lock, torch.inference_mode():
            for tokens in self._generate_tokens(requests):
                if isinstance(tokens, str):
                    results.append(GenerateResult(error=tokens))
                    continue
                images = tuple(
                    GeneratedImage(self._run(decode_image, self.model, t), seed, k, t)
                    for k, (seed, t) in enumerate(tokens)
                )
                results.append(GenerateResult(images=images))
        return results

    def generate_tokens(
        self, requests: Sequence[GenerateRequest]
    ) -> list[list[tuple[int, ...]] | str]:
        """Image tokens only (no VQ decoding): per request its n token tuples, or an error."""
        with self._lock, torch.inference_mode():
            return [
                t if isinstance(t, str) else [tokens for _, tokens in t]
                for t in self._generate_tokens(requests)
            ]

    def _generate_tokens(
        self, requests: Sequence[GenerateRequest]
    ) -> list[list[SeededTokens] | str]:
        """Per request: [(seed, tokens)] for its n images in index order, or an error string."""
        _check_types(requests, GenerateRequest)
        placeholder: SeededTokens = (0, ())
        outcome: list[list[SeededTokens] | str] = [[placeholder] * r.n for r in requests]
        units: list[ImageUnit] = []
        for i, request in enumerate(requests):
            try:
                request_units = prepare_images(self.processor, i, request, self.prompt_bucket)
                self._check_length(request_units[0].prompt_len + self.tokens.num_image_tokens)
                units.extend(request_units)
            except Exception as exc:  # broad on purpose: only this request fails
                logger.info("generate request %d failed: %s", i, _describe(exc))
                outcome[i] = _describe(exc)
        for batch in pack(
            units, capacity=self.max_batch_rows, rows=lambda u: u.rows, key=lambda u: u.shape_key
        ):
            started = time.perf_counter()
            token_lists = self._run(
                run_image_pass, self.model, self.tokens, batch, self.max_batch_rows
            )
            self._record("generate", len(batch), sum(u.rows for u in batch), started)
            for unit, image_tokens in zip(batch, token_lists, strict=True):
                images = outcome[unit.index]
                assert not isinstance(images, str), "a failed request has no units"
                images[unit.k] = (unit.seed, image_tokens)
        return outcome

    def _check_length(self, positions: int) -> None:
        if positions > self.max_positions:
            raise JanusRequestError(
                f"prompt too long: needs {positions} positions, the model has {self.max_positions}"
            )

    def _run(self, function, *args):
        try:
            return function(*args)
        except torch.OutOfMemoryError as exc:
            raise JanusRuntimeError(f"out of memory on {self.device}: {exc}") from exc

    def _record(self, kind: str, units: int, rows: int, started: float) -> None:
        self.forward_passes += 1
        logger.debug(
            "%s pass: %d units, %d/%d rows, %.3fs",
            kind,
            units,
            rows,
            self.max_batch_rows,
            time.perf_counter() - started,
        )
        if self.on_pass is not None:
            self.on_pass(kind, units, rows)


def _check_types(requests: Sequence[object], expected: type) -> None:
    for i, request in enumerate(requests):
        if not isinstance(request, expected):
            raise JanusRequestError(
                f"request {i} is a {type(request).__name__}, expected {expected.__name__}"
            )
