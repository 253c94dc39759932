"""Bounded memory when opening images (janus_batch.images.open_bounded, the one guard of the
worker's inputs and the API's thumbnails): the pixel limit is checked from the header before
decoding, JPEGs count at the scale they decode at, large images are reduced at once."""

from __future__ import annotations

import threading
from io import BytesIO

import pytest
from PIL import Image

from janus_batch.images import _BUDGET, ImageTooLarge, open_bounded
from janus_batch.settings import Settings
from tests.security.images import header_only_png

DEFAULT_LIMIT = Settings().max_image_pixels


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def test_the_default_limit_is_4096_squared() -> None:
    assert DEFAULT_LIMIT == 4096 * 4096


def test_an_image_over_the_limit_is_refused_from_its_header() -> None:
    data = header_only_png(9000, 9000)  # 81 Mpx, 69 bytes: decoding would fail as truncated
    with pytest.raises(ImageTooLarge) as info:
        open_bounded(data, max_pixels=DEFAULT_LIMIT, size=384)
    assert str(info.value) == (
        "image is 9000x9000 = 81,000,000 pixels, over the 16,777,216-pixel limit "
        "(JANUS_BATCH_MAX_IMAGE_PIXELS)"
    )
    with pytest.raises(OSError, match="truncated"):  # under a higher limit it is decoded
        open_bounded(data, max_pixels=81_000_000, size=384)


def test_a_jpeg_counts_at_the_scale_it_decodes_at() -> None:
    data = encode(Image.new("RGB", (1600, 1200), (200, 30, 30)), "JPEG")  # 1.92 Mpx
    image = open_bounded(data, max_pixels=150_000, size=200)  # draft: 1/4 scale, 400x300
    assert image.size == (400, 300)
    with pytest.raises(ImageTooLarge, match="1600x1200"):
        open_bounded(data, max_pixels=150_000)  # no target size: decoded whole, over the limit


def test_large_images_are_reduced_but_never_below_the_size() -> None:
    blue = encode(Image.new("RGB", (1000, 800), (10, 120, 240)), "PNG")
    image = open_bounded(blue, max_pixels=DEFAULT_LIMIT, size=100)
    assert image.size == (125, 100)  # by 8: both sides still >= 100
    assert image.getpixel((60, 50)) == (10, 120, 240)
    small = open_bounded(encode(Image.new("RGB", (150, 900)), "PNG"), max_pixels=10**6, size=100)
    assert small.size == (150, 900)  # not twice the size on both sides: kept as is
    grey = encode(Image.new("L", (1000, 800)), "PNG")
    assert open_bounded(grey, max_pixels=10**6).size == (1000, 800)  # no size: nothing to aim at


def test_reducing_keeps_what_the_model_runtime_reads() -> None:
    palette = Image.new("P", (800, 800), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    reduced = open_bounded(encode(palette, "PNG", transparency=0), max_pixels=10**6, size=100)
    assert reduced.mode == "RGBA" and reduced.size == (100, 100)  # palette indices not averaged
    assert reduced.getpixel((50, 50)) == (255, 0, 0, 255)
    deep_grey = encode(Image.new("I;16", (800, 800), 1000), "PNG")
    deep = open_bounded(deep_grey, max_pixels=10**6, size=100)
    assert deep.size == (800, 800)  # 16-bit grey keeps its mode for the runtime's scaling
    rotated = Image.new("RGB", (800, 400), "blue")
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    upright = open_bounded(encode(rotated, "PNG", exif=exif), max_pixels=10**6, size=100)
    assert upright.size == (200, 100) and upright.getexif().get(0x0112) == 6


def test_decodes_beyond_the_budget_wait_for_each_other() -> None:
    entered = threading.Event()
    first = _BUDGET.hold(60, 100)
    first.__enter__()

    def second() -> None:
        with _BUDGET.hold(60, 100):
            entered.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not entered.wait(0.3)  # 60 + 60 > 100: the second decode waits
    with _BUDGET.hold(40, 100):  # a small one fits beside the first
        pass
    first.__exit__(None, None, None)
    thread.join(timeout=10)
    assert entered.is_set()
    with _BUDGET.hold(500, 100):  # one image over the budget alone never waits forever
        pass
