"""Prompt formats Janus expects, and the special token ids the engine needs.

Both modes go through the checkpoint's chat template ("<|User|>: ...\n\n<|Assistant|>:"):
captions put the image placeholder before the question (the processor expands it to
begin-of-image + N image tokens + end-of-image, and prepends the system prompt when the
checkpoint asks for it); image generation appends begin-of-image to the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenIds:
    """Special token ids and sizes read once from the checkpoint."""

    bos: int
    eos: int
    pad: int
    boi: int
    image_token: int
    num_image_tokens: int
    image_size: int

    @classmethod
    def from_checkpoint(cls, model, processor) -> TokenIds:
        tokenizer = processor.tokenizer
        generation = model.generation_config
        pad = (
            generation.pad_token_id
            if generation.pad_token_id is not None
            else tokenizer.pad_token_id
        )
        eos = (
            generation.eos_token_id
            if generation.eos_token_id is not None
            else tokenizer.eos_token_id
        )
        if isinstance(eos, (list, tuple)):
            eos = eos[0]
        bos = (
            tokenizer.bos_token_id
            if tokenizer.bos_token_id is not None
            else generation.bos_token_id
        )
        vq = model.model.vqmodel.quantize.quant_state_dims
        side = model.config.vq_config.num_patches * 2 ** (
            len(model.config.vq_config.channel_multiplier) - 1
        )
        return cls(
            bos=int(bos),
            eos=int(eos),
            pad=int(pad if pad is not None else eos),
            boi=int(tokenizer.convert_tokens_to_ids(processor.image_start_token)),
            image_token=int(model.config.image_token_id),
            num_image_tokens=int(vq[0] * vq[1]),
            image_size=int(side),
        )


def _chat(processor, content: list[dict]) -> str:
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def caption_inputs(processor, question: str, image) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [L], pixel_values [1, 3, S, S]) for one caption request."""
    prompt = _chat(processor, [{"type": "image"}, {"type": "text", "text": question}])
    encoded = processor(text=[prompt], images=[image], return_tensors="pt")
    return encoded["input_ids"][0], encoded["pixel_values"]


def image_prompt_ids(processor, prompt: str) -> torch.Tensor:
    """input_ids [L] of the conditional prompt of an image-generation request."""
    text = _chat(processor, [{"type": "text", "text": prompt}])
    encoded = processor(text=[text], generation_mode="image", return_tensors="pt")
    return encoded["input_ids"][0]


def unconditional_ids(ids: torch.Tensor, tokens: TokenIds) -> torch.Tensor:
    """The unconditional prompt for guidance: keep BOS and begin-of-image, pad the rest."""
    keep = (ids == tokens.bos) | (ids == tokens.boi)
    return torch.where(keep, ids, torch.full_like(ids, tokens.pad))
