"""Encoding generated images with their provenance, and reading it back.

PNG carries each field as a text chunk (`prompt`, `seed`, `model`, ..., `Software`).
JPEG and WebP carry the same fields as one JSON object in EXIF `ImageDescription` and in
`UserComment` (ASCII-escaped JSON), with `Software` set too.

    data = encode_image(image, "png", {"prompt": "a fox", "seed": 7})
    read_metadata(data)  # {"prompt": "a fox", "seed": "7", "Software": "janus-batch"}
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngImageFile, PngInfo

SOFTWARE = "janus-batch"
_USER_COMMENT_ASCII = b"ASCII\x00\x00\x00"  # the EXIF character-code prefix of UserComment


@dataclass(frozen=True)
class EncodeSpec:
    """An output format: Pillow's name for it, the key extension and the content type."""

    pil_name: str
    ext: str
    content_type: str
    save_options: tuple[tuple[str, Any], ...] = ()


FORMATS = {
    "png": EncodeSpec("PNG", "png", "image/png", (("optimize", False),)),
    "jpeg": EncodeSpec("JPEG", "jpeg", "image/jpeg", (("quality", 95),)),
    "webp": EncodeSpec("WEBP", "webp", "image/webp", (("quality", 95),)),
}


def image_format(name: str | None) -> EncodeSpec:
    """The format named by a job's `params.format` (png when unset); ValueError if unknown."""
    key = (name or "png").lower()
    if key == "jpg":
        key = "jpeg"
    if key not in FORMATS:
        raise ValueError(f"unsupported image format {name!r}: use png, jpeg or webp")
    return FORMATS[key]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def encode_image(
    image: Image.Image,
    fmt: str | EncodeSpec,
    metadata: dict[str, Any],
    *,
    png_compress_level: int = 6,
) -> bytes:
    """`image` encoded as `fmt` with `metadata` (plus Software) embedded; PNGs at zlib level
    `png_compress_level` (workers use JANUS_BATCH_PNG_COMPRESS_LEVEL, 1 by default)."""
    spec = fmt if isinstance(fmt, EncodeSpec) else image_format(fmt)
    fields = {**metadata, "Software": SOFTWARE}
    options = dict(spec.save_options)
    if spec.pil_name == "PNG":
        options["compress_level"] = png_compress_level
        info = PngInfo()
        for key, value in fields.items():
            if value is not None:
                info.add_text(key, _as_text(value))  # iTXt when not Latin-1
        options["pnginfo"] = info
    else:
        image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
        text = json.dumps(fields, ensure_ascii=True, sort_keys=True)
        exif = Image.Exif()
        exif[ExifTags.Base.ImageDescription] = text
        exif[ExifTags.Base.Software] = SOFTWARE
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = (
            _USER_COMMENT_ASCII + text.encode("ascii")
        )
        options["exif"] = exif
    buffer = io.BytesIO()
    image.save(buffer, spec.pil_name, **options)
    return buffer.getvalue()


def read_metadata(data: bytes) -> dict[str, Any]:
    """The provenance fields embedded by `encode_image` (PNG values come back as strings)."""
    with Image.open(io.BytesIO(data)) as image:
        if isinstance(image, PngImageFile):
            image.load()
            return dict(image.text)
        exif = image.getexif()
    description = exif.get(ExifTags.Base.ImageDescription)
    if description:
        try:
            return json.loads(description)
        except json.JSONDecodeError:
            pass
    comment = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if isinstance(comment, bytes) and comment.startswith(_USER_COMMENT_ASCII):
        return json.loads(comment[len(_USER_COMMENT_ASCII) :].decode("ascii"))
    return {}
