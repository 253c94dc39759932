"""Captioning: many (image, question) requests decoded together in fixed-shape passes.

Each request is one row. Its prompt (system prompt, image tokens, question) is prefilled alone
with the image features of the vision tower run on that image alone; rows then decode
together, and every row stops at its own end-of-sentence token or its own max_new_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import hf_adapter
from .decoder import StaticDecoder
from .images import normalize_image
from .packing import round_up
from .prompts import TokenIds, caption_inputs
from .sampling import GREEDY, RowSampler, RowSampling
from .schemas import CaptionRequest

NEW_TOKEN_BUCKET = 64


@dataclass(frozen=True)
class CaptionUnit:
    """One caption request made ready for a pass."""

    index: int
    request: CaptionRequest
    input_ids: torch.Tensor
    pixel_values: torch.Tensor
    prompt_len: int
    new_len: int

    @property
    def shape_key(self) -> tuple[int, int]:
        return (self.prompt_len, self.new_len)


def prepare_caption(processor, index: int, request: CaptionRequest, bucket: int) -> CaptionUnit:
    """Normalise the image and tokenize; raises JanusImageError for an unusable image."""
    image = normalize_image(request.image)
    input_ids, pixel_values = caption_inputs(processor, request.question, image)
    return CaptionUnit(
        index=index,
        request=request,
        input_ids=input_ids,
        pixel_values=pixel_values,
        prompt_len=round_up(len(input_ids), bucket),
        new_len=round_up(request.max_new_tokens, NEW_TOKEN_BUCKET),
    )


def _prompt_embeds(model, tokens: TokenIds, unit: CaptionUnit) -> torch.Tensor:
    device, dtype = model.device, model.dtype
    ids = unit.input_ids.to(device)
    embeds = model.get_input_embeddings()(ids)
    pixels = unit.pixel_values.to(device=device, dtype=dtype)
    features = hf_adapter.image_features(model, pixels).to(embeds.dtype)
    slots = ids == tokens.image_token
    if int(slots.sum()) != features.shape[0]:
        raise ValueError(f"{int(slots.sum())} image slots for {features.shape[0]} image features")
    embeds[slots] = features
    return embeds


def run_caption_pass(
    model, processor, tokens: TokenIds, units: list[CaptionUnit], capacity: int
) -> list[str]:
    """Decode one pass (all units share a shape key); returns one text per unit."""
    prompt_len, new_len = units[0].shape_key
    embed_tokens = model.get_input_embeddings()
    decoder = StaticDecoder(hf_adapter.text_model(model), capacity, prompt_len, new_len)
    for row, unit in enumerate(units):
        decoder.prefill([row], _prompt_embeds(model, tokens, unit).unsqueeze(0))
    settings = [
        RowSampling(u.request.seed, u.request.temperature, None, u.request.top_p) for u in units
    ]
    settings += [GREEDY] * (capacity - len(units))
    sampler = RowSampler(settings, vocab=hf_adapter.text_vocab_size(model), device=model.device)
    limits = [u.request.max_new_tokens for u in units]
    outputs: list[list[int]] = [[] for _ in units]
    done = [False] * len(units)
    logits = hf_adapter.text_logits(model, decoder.prefilled())
    for step in range(max(limits)):
        values = (chosen := sampler.sample(logits)).tolist()
        for row in range(len(units)):
            if done[row]:
                continue
            if values[row] == tokens.eos:
                done[row] = True
                continue
            outputs[row].append(values[row])
            done[row] = len(outputs[row]) >= limits[row]
        if all(done) or step + 1 >= max(limits):
            break
        logits = hf_adapter.text_logits(model, decoder.step(embed_tokens(chosen.unsqueeze(-1))))
    return [_text(processor.tokenizer.decode(ids, skip_special_tokens=True)) for ids in outputs]


def _text(decoded: str) -> str:
    """Trim whitespace and the replacement character left when max_new_tokens cut a
    multi-byte character in half."""
    return decoded.strip().rstrip("\ufffd").rstrip()
