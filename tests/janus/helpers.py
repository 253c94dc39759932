"""Helpers shared by the janus runtime tests."""

from __future__ import annotations

import io

import torch
from PIL import Image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pattern_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A deterministic RGB test image that differs per seed."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())
