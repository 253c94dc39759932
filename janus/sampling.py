"""Per-row sampling: each row draws from its own torch.Generator, so its tokens never depend
on the other rows of the batch.

Sampling is Gumbel-max: token = argmax(logits / T + G) with G = -log(-log(U)), U drawn from
the row's generator. A sampled row draws exactly `vocab` uniforms per step whatever the other
rows do, so its random stream is fixed by its seed alone. Temperature 0 is argmax (first
index on ties). top-k and top-p keep every token whose scaled logit is >= a threshold, so
ties at the cut are all kept and the result does not depend on sort stability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowSampling:
    """How one row samples; seed is unused when temperature is 0."""

    seed: int = 0
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = RowSampling()


def filter_logits(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) tokens outside each row's top-k and top-p sets.

    scaled: [R, V] temperature-scaled logits; top_k: [R] long (V = off); top_p: [R] (>= 1 = off).
    """
    vocab = scaled.shape[-1]
    ordered = torch.sort(scaled, dim=-1, descending=True).values
    k_index = (top_k.clamp(1, vocab) - 1).unsqueeze(-1)
    k_threshold = ordered.gather(-1, k_index)
    probs = torch.softmax(ordered, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    kept = (mass_before < top_p.unsqueeze(-1)).sum(dim=-1, keepdim=True).clamp(min=1)
    p_threshold = ordered.gather(-1, kept - 1)
    threshold = torch.maximum(k_threshold, p_threshold)
    return scaled.masked_fill(scaled < threshold, float("-inf"))


class RowSampler:
    """Samples one token per row from [R, V] logits with per-row settings and generators."""

    def __init__(self, rows: Sequence[RowSampling], vocab: int, device: torch.device):
        self.rows = list(rows)
        self.vocab = vocab
        self.device = device
        count = len(self.rows)
        self.sampled = [i for i, row in enumerate(self.rows) if not row.greedy]
        self.generators: dict[int, torch.Generator] = {}
        for i in self.sampled:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.rows[i].seed)
            self.generators[i] = generator
        temperature = [row.temperature if not row.greedy else 1.0 for row in self.rows]
        self.temperature = torch.tensor(temperature, dtype=torch.float32, device=device).unsqueeze(
            -1
        )
        # "off" is k = vocab and p = 2 (not 1: float32 cumulative sums can reach 1 early)
        top_k = [row.top_k if row.top_k is not None else vocab for row in self.rows]
        top_p = [row.top_p if row.top_p is not None and row.top_p < 1 else 2.0 for row in self.rows]
        self.top_k = torch.tensor(top_k, device=device)
        self.top_p = torch.tensor(top_p, dtype=torch.float32, device=device)
        self.filtering = any(k < vocab for k in top_k) or any(p < 1 for p in top_p)
        self.greedy_mask = torch.tensor([row.greedy for row in self.rows], device=device)
        self.noise = torch.zeros((count, vocab), dtype=torch.float32, device=device)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [R, V] (any float dtype) -> tokens [R] (long)."""
        logits = logits.float()
        greedy_tokens = torch.argmax(logits, dim=-1)
        if not self.sampled:
            return greedy_tokens
        for i in self.sampled:
            torch.rand(
                self.vocab, generator=self.generators[i], device=self.device, out=self.noise[i]
            )
        gumbel = -torch.log(-torch.log(self.noise.clamp(min=torch.finfo(torch.float32).tiny)))
        scaled = logits / self.temperature
        if self.filtering:
            scaled = filter_logits(scaled, self.top_k, self.top_p)
        sampled_tokens = torch.argmax(scaled + gumbel, dim=-1)
        return torch.where(self.greedy_mask, greedy_tokens, sampled_tokens)
