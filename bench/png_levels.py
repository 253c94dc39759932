"""PNG zlib level: encode time against file size for 384x384 photo-like images (what
JANUS_BATCH_PNG_COMPRESS_LEVEL trades). Prints a table with level 6 (Pillow's default) as
the baseline measured in the same run. A bench, not a test: `python bench/png_levels.py`.
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

LEVELS = (0, 1, 3, 6, 9)
BASELINE = 6


def photo_like(seed: int, side: int = 384) -> Image.Image:
    """Smooth colour fields with fine grain, like a generated picture (not pure noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(1, 6, size=3)
        field = 0.5 + 0.25 * np.sin(a * x * 3.1 + b * y * 2.3) + 0.2 * np.cos(c * x * y * 4.0)
        channels.append(field + rng.normal(0, 0.03, size=(side, side)))
    array = np.clip(np.stack(channels, axis=-1) * 255, 0, 255).astype(np.uint8)
    return Image.fromarray(array, "RGB")


def measure(images: list[Image.Image], level: int) -> tuple[float, float]:
    """(CPU ms per image, KiB per image) at `level`."""
    sizes = []
    started = time.process_time()
    for image in images:
        out = io.BytesIO()
        image.save(out, "PNG", compress_level=level)
        sizes.append(len(out.getvalue()))
    seconds = time.process_time() - started
    return 1000 * seconds / len(images), sum(sizes) / len(sizes) / 1024


def main() -> None:
    images = [photo_like(seed) for seed in range(24)]
    rows = {level: measure(images, level) for level in LEVELS}
    base_ms, base_kib = rows[BASELINE]
    print(f"\nPNG encode of {len(images)} photo-like 384x384 images (CPU time, one thread)\n")
    print("| zlib level | ms per image | KiB per image | speed vs level 6 | size vs level 6 |")
    print("| --- | --- | --- | --- | --- |")
    for level, (ms, kib) in rows.items():
        print(f"| {level} | {ms:.1f} | {kib:.0f} | {base_ms / ms:.2f}x | {kib / base_kib:.2f}x |")


if __name__ == "__main__":
    main()
