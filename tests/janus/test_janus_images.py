import io

import numpy as np
import pytest
from PIL import Image

from janus import CaptionRequest, JanusError
from janus.errors import JanusImageError
from janus.images import normalize_image

from .helpers import pattern_image


def pixel(image: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    out = normalize_image(image)
    assert out.mode == "RGB" and out.size == image.size
    return out.getpixel(xy)


def reopen(image: Image.Image, fmt: str, **save) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    buffer.seek(0)
    return Image.open(buffer)


@pytest.mark.parametrize(
    "image,expected",
    [
        (Image.new("1", (5, 3), 1), (255, 255, 255)),
        (Image.new("1", (5, 3), 0), (0, 0, 0)),
        (Image.new("L", (5, 3), 100), (100, 100, 100)),
        (Image.new("LA", (5, 3), (100, 0)), (255, 255, 255)),
        (Image.new("LA", (5, 3), (100, 255)), (100, 100, 100)),
        (Image.new("RGBA", (5, 3), (255, 0, 0, 0)), (255, 255, 255)),
        (Image.new("RGBA", (5, 3), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("RGBA", (5, 3), (0, 0, 0, 128)), (127, 127, 127)),
        (Image.new("CMYK", (5, 3), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("CMYK", (5, 3), (0, 255, 255, 0)), (255, 0, 0)),
        (Image.new("I;16", (5, 3), 65535), (255, 255, 255)),
        (Image.new("I;16", (5, 3), 32896), (128, 128, 128)),
        (Image.new("I;16B", (5, 3), 65535), (255, 255, 255)),
        (Image.new("RGB", (5, 3), (1, 2, 3)), (1, 2, 3)),
    ],
    ids=lambda v: v.mode if isinstance(v, Image.Image) else "",
)
def test_modes_become_rgb(image, expected):
    assert pixel(image) == expected


def test_sixteen_bit_png_keeps_its_gradient():
    ramp = (np.arange(64 * 4, dtype=np.uint32).reshape(4, 64) * 257).astype(np.uint16)
    image = reopen(Image.fromarray(ramp), "PNG")
    assert image.mode.startswith("I")
    out = np.asarray(normalize_image(image))[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert np.array_equal(out, np.rint(ramp / 257).astype(np.uint8))


def test_32_bit_integer_and_float_are_scaled_by_their_range():
    wide = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert [pixel(wide, (x, 0))[0] for x in (0, 1)] == [0, 255]
    signed = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert [pixel(signed, (x, 0))[0] for x in range(3)] == [0, 128, 255]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert [pixel(unit, (x, 0))[0] for x in range(3)] == [0, 128, 255]
    hdr = Image.fromarray(np.array([[-5.0, 5.0, np.nan]], dtype=np.float32))
    assert [pixel(hdr, (x, 0))[0] for x in range(3)] == [0, 255, 128]


def test_palette_with_and_without_transparency():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert pixel(palette) == (10, 200, 30)
    transparent = reopen(palette, "PNG", transparency=1)
    assert "transparency" in transparent.info
    assert pixel(transparent) == (255, 255, 255)
    pa = Image.new("PA", (4, 4), (1, 0))
    pa.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert pixel(pa) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (20, 10), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    out = normalize_image(reopen(image, "JPEG", exif=exif.tobytes()))
    assert out.size == (10, 20)


def test_animated_images_use_the_first_frame():
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    buffer.seek(0)
    animated = Image.open(buffer)
    assert animated.is_animated
    animated.seek(1)
    red, _, blue = normalize_image(animated).getpixel((4, 4))
    assert red > 200 and blue < 50


def test_truncated_file_and_non_images_raise_janus_image_error():
    buffer = io.BytesIO()
    pattern_image(1, (64, 64)).save(buffer, format="PNG")
    truncated = Image.open(io.BytesIO(buffer.getvalue()[:200]))
    with pytest.raises(JanusImageError, match="cannot read image"):
        normalize_image(truncated)
    with pytest.raises(JanusImageError, match=r"expected a PIL\.Image\.Image"):
        normalize_image(b"not an image")
    assert issubclass(JanusImageError, JanusError)


def test_extreme_sizes_and_modes_caption_end_to_end(engine):
    images = [
        Image.new("RGB", (1, 1), (10, 20, 30)),
        pattern_image(2, (10000, 50)),
        pattern_image(3, (50, 10000)),
        Image.new("I;16", (30, 20), 40000),
        Image.new("CMYK", (30, 20), (10, 20, 30, 40)),
        Image.new("LA", (30, 20), (10, 99)),
    ]
    results = engine.caption([CaptionRequest(image, max_new_tokens=4) for image in images])
    assert all(result.ok and isinstance(result.text, str) for result in results), results


def test_a_corrupt_image_fails_only_its_own_request(engine):
    buffer = io.BytesIO()
    pattern_image(4, (64, 64)).save(buffer, format="PNG")
    corrupt = Image.open(io.BytesIO(buffer.getvalue()[:300]))
    good = [pattern_image(5), pattern_image(6)]
    requests = [
        CaptionRequest(good[0], max_new_tokens=6),
        CaptionRequest(corrupt, max_new_tokens=6),
        CaptionRequest("not an image", max_new_tokens=6),
        CaptionRequest(good[1], max_new_tokens=6),
    ]
    results = engine.caption(requests)
    assert [r.ok for r in results] == [True, False, False, True]
    assert "cannot read image" in results[1].error and results[1].text is None
    assert "expected a PIL.Image.Image" in results[2].error
    alone = engine.caption([requests[0], requests[3]])
    assert [r.text for r in alone] == [results[0].text, results[3].text]
