"""Input image normalisation: any PIL image a user may send becomes a plain 8-bit RGB image.

Handles EXIF orientation, animated images (first frame), palette and alpha modes (alpha is
composited on white), CMYK, 1-bit, and 16-bit / 32-bit / float greyscale (scaled to 8 bits
from their value range, not clipped). Anything that still cannot be read raises
JanusImageError, which fails only the request that carried the image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from .errors import JanusImageError

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WHITE = (255, 255, 255, 255)


def _first_frame(image: Image.Image) -> Image.Image:
    if getattr(image, "is_animated", False) or getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    return image


def _exif_upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # broad on purpose: a broken EXIF block must not lose the image
        return image


def _scale_to_uint8(values: np.ndarray, full_scale: float | None) -> np.ndarray:
    """Map integer or float samples to 0..255: by `full_scale` if given, else by their range."""
    is_float = values.dtype.kind == "f"
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, 0.0)
    if full_scale is None:
        low, high = float(values.min()), float(values.max())
        if is_float and low >= 0.0 and high <= 1.0:
            full_scale = 1.0
        elif low >= 0.0 and high <= 255.0:
            full_scale = 255.0
        elif low >= 0.0 and high <= 65535.0:
            full_scale = 65535.0
        else:
            span = high - low
            values = (values - low) / span if span > 0 else np.zeros_like(values)
            full_scale = 1.0
    return np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def _deep_grey_to_rgb(image: Image.Image) -> Image.Image:
    """Modes I;16*, I and F: greyscale deeper than 8 bits."""
    samples = np.asarray(image)
    full_scale = 65535.0 if image.mode.startswith("I;16") else None
    grey = _scale_to_uint8(samples, full_scale)
    return Image.fromarray(grey).convert("RGB")


def _alpha_to_rgb(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def normalize_image(image: object) -> Image.Image:
    """Return `image` as an upright, fully loaded 8-bit RGB image, or raise JanusImageError."""
    if not isinstance(image, Image.Image):
        raise JanusImageError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    try:
        image = _first_frame(image)
        image.load()
        image = _exif_upright(image)
        if image.width < 1 or image.height < 1:
            raise JanusImageError(f"image has no pixels ({image.width}x{image.height})")
        mode = image.mode
        if mode in _ALPHA_MODES or (mode in {"P", "L", "RGB"} and "transparency" in image.info):
            rgb = _alpha_to_rgb(image)
        elif mode == "RGB":
            rgb = image.copy()
        elif mode.startswith("I") or mode == "F":
            rgb = _deep_grey_to_rgb(image)
        else:  # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX...
            rgb = image.convert("RGB")
    except JanusImageError:
        raise
    except Exception as exc:  # broad on purpose: PIL raises OSError, ValueError, SyntaxError...
        raise JanusImageError(f"cannot read image: {type(exc).__name__}: {exc}") from None
    rgb.info.clear()
    return rgb
