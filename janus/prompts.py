"""Prompt formats Janus expects, and the special token ids the engine needs.

Both modes go through the checkpoint's chat template ("<|User|>: ...\n\n<|Assistant|>:"):
captions put the image placeholder before the question (the processor expands it to
begin-of-image + N image tokens + end-of-image, and prepends the system prompt when the
checkpoint asks for it); image generation appends begin-of-image to the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import hf_adapter


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
        grid_rows, grid_columns = hf_adapter.image_token_grid(model)
        return cls(
            bos=int(bos),
            eos=int(eos),
            pad=int(pad if pad is not None else eos),
            boi=int(tokenizer.convert_tokens_to_ids(hf_adapter.begin_of_image_token(processor))),
            image_token=int(model.config.image_token_id),
            num_image_tokens=grid_rows * grid_columns,
            image_size=hf_adapter.generated_image_side(model.config),
        )


def _chat(processor, content: list[dict]) -> str:
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def caption_inputs(processor, question: str, image) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [L], pixel_values [1, 3, S, S]) for one caption request."""
    prompt = _chat(processor, [{"type": "image"}, {"type": "text", "text": question}])
    return hf_adapter.encode_caption_prompt(processor, prompt, image)


def image_prompt_ids(processor, prompt: str) -> torch.Tensor:
    """input_ids [L] of the conditional prompt of an image-generation request."""
    text = _chat(processor, [{"type": "text", "text": prompt}])
    return hf_adapter.encode_image_prompt(processor, text)


def unconditional_ids(ids: torch.Tensor, tokens: TokenIds) -> torch.Tensor:
    """The unconditional prompt for guidance: keep BOS and begin-of-image, pad the rest."""
    keep = (ids == tokens.bos) | (ids == tokens.boi)
    return torch.where(keep, ids, torch.full_like(ids, tokens.pad))
