"""Opening untrusted images with bounded memory: one guard for the worker's inputs and the
API's thumbnails; and `to_rgb`, the model runtime's input normalisation (janus.images) in
Pillow alone, so a thumbnail shows what the model sees (a 16-bit grey scan is not white).

    image = open_bounded(data, max_pixels=settings.max_image_pixels, size=384)

- The pixel count is checked from the header (Pillow's `Image.open` reads only that) before
  anything is decoded: an image over `max_pixels` is `ImageTooLarge`, naming the limit.
- A JPEG is decoded at the smallest DCT scale still at least `size` on each side (`draft`:
  up to 8x smaller each way) and counted at that scale.
- A decoded image at least twice `size` on each side is reduced at once (`Image.reduce`,
  box averaging, never below `size`), so what is kept until the model resizes it is small.
- The pixels being decoded at once in a process are bounded too: a decode waits while
  others hold `max_pixels` between them (any one image under the limit always proceeds).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from io import BytesIO

from PIL import Image, ImageOps

__all__ = ["ImageTooLarge", "open_bounded", "to_rgb"]

LIMIT_SETTING = "JANUS_BATCH_MAX_IMAGE_PIXELS"
_AVERAGED = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"})
"""Modes whose samples `reduce` may average (not palette indices, not 1-bit, not I;16, whose
scaling the model runtime reads from the mode)."""


class ImageTooLarge(ValueError):
    """An image with more pixels than the limit; it is never decoded."""


class _PixelBudget:
    """Pixels being decoded in this process; a decode waits while others hold the budget."""

    def __init__(self) -> None:
        self._used = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, capacity: int) -> Iterator[None]:
        with self._cond:
            while self._used and self._used + pixels > capacity:
                self._cond.wait()
            self._used += pixels
        try:
            yield
        finally:
            with self._cond:
                self._used -= pixels
                self._cond.notify_all()


_BUDGET = _PixelBudget()


def _too_large(width: int, height: int, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"image is {width}x{height} = {width * height:,} pixels, over the {max_pixels:,}-pixel "
        f"limit ({LIMIT_SETTING})"
    )


def _reduced(image: Image.Image, size: int) -> Image.Image:
    """`image` shrunk by the largest whole factor that keeps both sides >= `size`."""
    factor = min(image.width // size, image.height // size)
    if factor < 2:
        return image
    if image.mode in ("P", "PA") or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")  # what the model runtime does with them anyway
    elif image.mode == "1":
        image = image.convert("L")
    if image.mode not in _AVERAGED:
        return image
    reduced = image.reduce(factor)
    reduced.info = dict(image.info)  # EXIF orientation and the like survive
    return reduced


def open_bounded(data: bytes, *, max_pixels: int, size: int | None = None) -> Image.Image:
    """Decode `data` (first frame) within the pixel limit, reduced towards `size` if given.

    Raises ImageTooLarge over the limit, and what Pillow raises for data it cannot read
    (UnidentifiedImageError, OSError, SyntaxError, ValueError).
    """
    try:
        image = Image.open(BytesIO(data))
    except Image.DecompressionBombError:  # over Pillow's own limit (2 x its 89 Mpx warning)
        raise ImageTooLarge(
            f"image is over the {max_pixels:,}-pixel limit ({LIMIT_SETTING})"
        ) from None
    if size and image.format == "JPEG":
        image.draft("RGB", (size, size))  # image.size is now the scale it will decode at
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise _too_large(width, height, max_pixels)
    with _BUDGET.hold(width * height, max_pixels):
        image.load()
        return _reduced(image, size) if size else image


_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)


def _extrema(image: Image.Image) -> tuple[float, float]:
    """The lowest and highest sample of a one-band image."""
    low, high = image.getextrema()
    assert isinstance(low, int | float) and isinstance(high, int | float), image.mode
    return float(low), float(high)


def _full_scale(image: Image.Image) -> float | None:
    """What the deepest sample of a deep grey image stands for; None: stretch its range."""
    if image.mode.startswith("I;16"):
        return 65535.0
    low, high = _extrema(image)
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        return 1.0
    if low >= 0 and high <= 255:
        return 255.0
    if low >= 0 and high <= 65535:
        return 65535.0
    return None


def _deep_grey_to_rgb(image: Image.Image) -> Image.Image:
    """Modes I;16*, I and F to 8 bits by their value range, not clipped (as the model does)."""
    samples = image.convert("F")
    full = _full_scale(image)
    if full is None:
        low, high = _extrema(samples)
        span = high - low
        scale, offset = (255.0 / span, -low * 255.0 / span) if span > 0 else (0.0, 0.0)
    else:
        scale, offset = 255.0 / full, 0.0
    grey = samples.point(lambda v: v * scale + offset + 0.5).convert("L")
    return grey.convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as an upright 8-bit RGB image, as the model runtime normalises its inputs
    (janus/images.py; tests/ui/test_thumbs.py checks they agree): the first frame, EXIF
    orientation, alpha composited on white, 16-bit / 32-bit / float grey scaled to 8 bits
    from its value range. Raises what Pillow raises for an image it cannot read."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image.load()
    with suppress(Exception):  # broad on purpose: a broken EXIF block must not lose the image
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in _ALPHA_MODES or (mode in {"P", "L", "RGB"} and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return _deep_grey_to_rgb(image)
    return image.convert("RGB")
