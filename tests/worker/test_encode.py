"""Image encoding with provenance metadata, read back with Pillow."""

from __future__ import annotations

import io

import pytest
from PIL import ExifTags, Image

from worker.encode import encode_image, image_format, read_metadata

META = {"prompt": "a fox in the snow, 雪", "seed": 123, "cfg_weight": 5.0, "job_id": "job_1"}


def test_png_text_chunks() -> None:
    data = encode_image(Image.new("RGB", (8, 8), "red"), "png", META)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG" and image.size == (8, 8)
        text = dict(image.text)
    assert text["prompt"] == META["prompt"]
    assert text["seed"] == "123" and text["cfg_weight"] == "5.0"
    assert text["Software"] == "janus-batch"
    assert read_metadata(data) == text


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_exif_json(fmt: str) -> None:
    data = encode_image(Image.new("RGB", (8, 8), "blue"), fmt, META)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == fmt.upper()
        exif = image.getexif()
        assert exif[ExifTags.Base.Software] == "janus-batch"
        comment = exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    assert comment.startswith(b"ASCII\x00\x00\x00")
    assert read_metadata(data) == {**META, "Software": "janus-batch"}


def test_formats() -> None:
    assert image_format(None).ext == "png"
    assert image_format("jpg").content_type == "image/jpeg"
    with pytest.raises(ValueError, match="unsupported image format"):
        image_format("gif")
