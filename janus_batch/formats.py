"""Image file formats every part agrees on: which files are images, which formats a
generate job may write. Standard library only, so the HTTP client and CLI may import it
without the core's dependencies (see tests/test_dependencies.py, LIGHT_CORE)."""

from __future__ import annotations

from enum import StrEnum

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
"""File extensions (lower case) taken for images: the CLI's folder uploads, the worker's S3
prefix listings. A tuple, so both `key.lower().endswith(IMAGE_EXTENSIONS)` and
`path.suffix.lower() in IMAGE_EXTENSIONS` work."""


class ImageFormat(StrEnum):
    """The formats a generate job writes its images in (`params.format`)."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"
