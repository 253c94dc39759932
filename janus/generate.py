"""Image generation: the images of many requests decoded together in fixed-shape passes.

Each image is a unit of two rows when guided (conditional prompt + unconditional prompt that
keeps only BOS and begin-of-image, attending to the pads in between as transformers and the
upstream code do) or one row when cfg_weight is 1. Each unit's prompts are prefilled once,
then every step runs all rows of the pass and feeds the chosen image token to both rows of its
unit. Guidance is combined per unit with its own weight (uncond + w * (cond - uncond)), and
each unit samples from its own generator seeded with `derive_seed(request.seed, k)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import hf_adapter
from .decoder import StaticDecoder
from .packing import round_up
from .prompts import TokenIds, image_prompt_ids, unconditional_ids
from .sampling import GREEDY, RowSampler, RowSampling
from .schemas import GenerateRequest
from .seeds import derive_seed


@dataclass(frozen=True)
class ImageUnit:
    """Image `k` of request `index`."""

    index: int
    k: int
    seed: int
    request: GenerateRequest
    input_ids: torch.Tensor
    prompt_len: int

    @property
    def rows(self) -> int:
        return 2 if self.request.guided else 1

    @property
    def shape_key(self) -> int:
        return self.prompt_len

    @property
    def sampling(self) -> RowSampling:
        r = self.request
        return RowSampling(self.seed, r.temperature, r.top_k, r.top_p)


def prepare_images(processor, index: int, request: GenerateRequest, bucket: int) -> list[ImageUnit]:
    """Tokenize the prompt once and make the request's n units."""
    input_ids = image_prompt_ids(processor, request.prompt)
    prompt_len = round_up(len(input_ids), bucket)
    return [
        ImageUnit(index, k, derive_seed(request.seed, k), request, input_ids, prompt_len)
        for k in range(request.n)
    ]


def _layout(units: list[ImageUnit], capacity: int):
    """Rows of each unit (cond first), and for every row the unit it belongs to."""
    unit_rows, unit_of_row, row = [], [0] * capacity, 0
    for u, unit in enumerate(units):
        unit_rows.append(list(range(row, row + unit.rows)))
        for r in unit_rows[-1]:
            unit_of_row[r] = u
        row += unit.rows
    return unit_rows, unit_of_row


def run_image_pass(
    model, tokens: TokenIds, units: list[ImageUnit], capacity: int
) -> list[tuple[int, ...]]:
    """Generate the image tokens of one pass (units share a prompt length); one tuple per unit."""
    device = model.device
    count = len(units)
    unit_rows, unit_of_row = _layout(units, capacity)
    decoder = StaticDecoder(
        hf_adapter.text_model(model), capacity, units[0].shape_key, tokens.num_image_tokens
    )
    for unit, rows in zip(units, unit_rows, strict=True):
        prompts = [unit.input_ids] + (
            [unconditional_ids(unit.input_ids, tokens)] if unit.request.guided else []
        )
        decoder.prefill(rows, model.get_input_embeddings()(torch.stack(prompts).to(device)))
    # units beyond `count` are dummies: they read the last row (a dummy or unused one), argmax
    cond_rows = torch.tensor(
        [rows[0] for rows in unit_rows] + [capacity - 1] * (capacity - count), device=device
    )
    uncond_rows = torch.tensor(
        [rows[-1] for rows in unit_rows] + [capacity - 1] * (capacity - count), device=device
    )
    row_unit = torch.tensor(unit_of_row, device=device)
    weights = torch.ones((capacity, 1), dtype=torch.float32, device=device)
    weights[:count, 0] = torch.tensor([float(u.request.cfg_weight) for u in units])
    guided = torch.zeros((capacity, 1), dtype=torch.bool, device=device)
    guided[:count, 0] = torch.tensor([u.request.guided for u in units])
    sampler = RowSampler(
        [u.sampling for u in units] + [GREEDY] * (capacity - count),
        vocab=hf_adapter.image_vocab_size(model),
        device=device,
    )
    generated = torch.empty((capacity, tokens.num_image_tokens), dtype=torch.long, device=device)
    hidden = decoder.prefilled()
    for step in range(tokens.num_image_tokens):
        logits = hf_adapter.image_logits(model, hidden).float()
        cond, uncond = logits[cond_rows], logits[uncond_rows]
        chosen = sampler.sample(torch.where(guided, uncond + (cond - uncond) * weights, cond))
        generated[:, step] = chosen
        if step + 1 < tokens.num_image_tokens:
            row_tokens = chosen[row_unit].unsqueeze(-1)
            hidden = decoder.step(hf_adapter.image_token_embeddings(model, row_tokens))
    return [tuple(row) for row in generated[:count].tolist()]


def decode_image(model, image_tokens: tuple[int, ...]) -> Image.Image:
    """VQ-decode one image's tokens (alone, so pixels never depend on a batch) to 8-bit RGB."""
    ids = torch.tensor([image_tokens], dtype=torch.long, device=model.device)
    pixels = hf_adapter.decode_image_tokens(model, ids)[0].float()  # [H, W, 3] in [-1, 1]
    array = ((pixels + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))
