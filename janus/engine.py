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
from PIL import Image

from .caption import CaptionUnit, prepare_caption, run_caption_pass
from .errors import JanusLoadError, JanusRequestError, JanusRuntimeError
from .generate import ImageUnit, decode_image, prepare_images, run_image_pass
from .loading import DEFAULT_MODEL, load_checkpoint, resolve_device, resolve_dtype
from .packing import pack
from .prompts import TokenIds
from .schemas import CaptionRequest, CaptionResult, GeneratedImage, GenerateRequest, GenerateResult

logger = logging.getLogger(__name__)

Unit = CaptionUnit | ImageUnit
"""What a pass is made of: one caption, or one image (its conditional + unconditional rows)."""

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
        self._lock = threading.RLock()
        # The fast tokenizer is not safe for concurrent calls: prepare() takes this lock
        # (never the device lock above, so preparing overlaps with a running pass).
        self._prepare_lock = threading.Lock()

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

    # --- the pass-level API: prepare on any thread, run passes on the device's thread -----

    def prepare(self, request: CaptionRequest | GenerateRequest) -> list[Unit]:
        """The units of one request, ready for a pass: its image normalised and preprocessed
        and its prompt tokenized (CPU work, safe on any thread, no device touched); one unit
        for a caption, n for images. Raises JanusRequestError / JanusImageError naming what is
        wrong with this request alone."""
        with self._prepare_lock:
            if isinstance(request, CaptionRequest):
                unit = prepare_caption(self.processor, 0, request, self.prompt_bucket)
                self._check_length(unit.prompt_len + unit.new_len)
                return [unit]
            if isinstance(request, GenerateRequest):
                units = prepare_images(self.processor, 0, request, self.prompt_bucket)
                self._check_length(units[0].prompt_len + self.tokens.num_image_tokens)
                return list(units)
        raise JanusRequestError(f"not a request: {type(request).__name__}")

    @staticmethod
    def unit_rows(unit: Unit) -> int:
        """Rows of a pass a unit takes: 1 for a caption, 1 or 2 (guided) for an image."""
        return unit.rows if isinstance(unit, ImageUnit) else 1

    def check_pass(self, units: Sequence[Unit]) -> int:
        """The rows of a valid pass: units of one kind and one shape key, at most
        `max_batch_rows` rows; JanusRequestError otherwise."""
        kinds = {isinstance(unit, CaptionUnit) for unit in units}
        keys = {unit.shape_key for unit in units}
        rows = sum(self.unit_rows(unit) for unit in units)
        if len(kinds) != 1 or len(keys) != 1 or rows > self.max_batch_rows:
            raise JanusRequestError(
                f"a pass needs one kind, one shape and at most {self.max_batch_rows} rows, "
                f"got {len(kinds)} kinds, {len(keys)} shapes and {rows} rows"
            )
        return rows

    def run_pass(self, units: Sequence[Unit]) -> list[str] | list[tuple[int, ...]]:
        """One forward pass over units of one kind and one shape key, at most
        `max_batch_rows` rows: the caption texts, or the image tokens, per unit in order.
        Call it from the thread that owns the device. JanusRuntimeError(transient) when the
        device ran out of memory."""
        if not units:
            return []
        rows = self.check_pass(units)
        with self._lock, torch.inference_mode():
            started = time.perf_counter()
            if isinstance(units[0], CaptionUnit):
                texts = self._run(
                    run_caption_pass,
                    self.model,
                    self.processor,
                    self.tokens,
                    list(units),
                    self.max_batch_rows,
                )
                self._record("caption", len(units), len(units), started)
                return list(texts)
            tokens = self._run(
                run_image_pass, self.model, self.tokens, list(units), self.max_batch_rows
            )
            self._record("generate", len(units), rows, started)
            return list(tokens)

    def decode(self, image_tokens: tuple[int, ...]) -> Image.Image:
        """The image of one unit's tokens (VQ decoding; on the device's thread)."""
        with self._lock, torch.inference_mode():
            return self._run(decode_image, self.model, image_tokens)

    # --- whole requests: prepare, pack, run (notebooks, tests, the benchmark) ---------------

    def caption(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        """One result per request, in request order; a bad image fails only its own request."""
        _check_types(requests, CaptionRequest)
        results: list[CaptionResult | None] = [None] * len(requests)
        units: list[CaptionUnit] = []
        owner: dict[int, int] = {}
        with self._lock:
            for i, request in enumerate(requests):
                try:
                    [unit] = self.prepare(request)
                except Exception as exc:  # broad on purpose: only this request fails
                    logger.info("caption request %d failed: %s", i, _describe(exc))
                    results[i] = CaptionResult(error=_describe(exc))
                    continue
                assert isinstance(unit, CaptionUnit)
                units.append(unit)
                owner[id(unit)] = i
            for batch in pack(
                units, capacity=self.max_batch_rows, rows=lambda u: 1, key=lambda u: u.shape_key
            ):
                for unit, text in zip(batch, self.run_pass(batch), strict=True):
                    results[owner[id(unit)]] = CaptionResult(text=str(text))
        return [r if r is not None else CaptionResult(error="not processed") for r in results]

    def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        """One result per request, in request order, each with its n images in index order."""
        results = []
        with self._lock:
            for tokens in self._generate_tokens(requests):
                if isinstance(tokens, str):
                    results.append(GenerateResult(error=tokens))
                    continue
                images = tuple(
                    GeneratedImage(self.decode(t), seed, k, t) for k, (seed, t) in enumerate(tokens)
                )
                results.append(GenerateResult(images=images))
        return results

    def generate_tokens(
        self, requests: Sequence[GenerateRequest]
    ) -> list[list[tuple[int, ...]] | str]:
        """Image tokens only (no VQ decoding): per request its n token tuples, or an error."""
        with self._lock:
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
        owner: dict[int, int] = {}
        for i, request in enumerate(requests):
            try:
                request_units = self.prepare(request)
            except Exception as exc:  # broad on purpose: only this request fails
                logger.info("generate request %d failed: %s", i, _describe(exc))
                outcome[i] = _describe(exc)
                continue
            for unit in request_units:
                assert isinstance(unit, ImageUnit)
                units.append(unit)
                owner[id(unit)] = i
        for batch in pack(
            units, capacity=self.max_batch_rows, rows=lambda u: u.rows, key=lambda u: u.shape_key
        ):
            for unit, image_tokens in zip(batch, self.run_pass(batch), strict=True):
                images = outcome[owner[id(unit)]]
                assert not isinstance(images, str), "a failed request has no units"
                assert isinstance(image_tokens, tuple)
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
