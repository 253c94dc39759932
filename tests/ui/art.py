"""Colourful sample pictures drawn with Pillow (skies, hills, moons, shapes), standing in for
generated images in dashboard tests and the README screenshot. Deterministic per seed."""

from __future__ import annotations

import colorsys
import random
from collections.abc import Callable
from io import BytesIO

from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]
S = 768  # drawn at 2x, then reduced: smooth edges


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _gradient(top: RGB, bottom: RGB, size: int = S) -> Image.Image:
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for y in range(size):
        t = y / (size - 1)
        fill = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (size, y)], fill=fill)
    return img


def _ridge(rng: random.Random, base: float, rough: float) -> list[tuple[float, float]]:
    points, y = [(0.0, float(S))], base
    for x in range(0, S + 64, 64):
        y = min(S - 20.0, max(S * 0.25, y + rng.uniform(-rough, rough)))
        points.append((float(x), y))
    return [*points, (float(S), float(S))]


def mountains(rng: random.Random, hue: float) -> Image.Image:
    img = _gradient(_hsv(hue + 0.02, 0.7, 1.0), _hsv(hue - 0.12, 0.55, 0.55))
    draw = ImageDraw.Draw(img)
    sx, sy, r = rng.uniform(0.25, 0.75) * S, S * 0.42, S * 0.11
    draw.ellipse([sx - r, sy - r, sx + r, sy + r], fill=_hsv(hue + 0.08, 0.35, 1.0))
    for layer in range(4):
        v = 0.55 - layer * 0.12
        draw.polygon(_ridge(rng, S * (0.5 + layer * 0.12), 70), fill=_hsv(hue - 0.2, 0.5, v))
    return img


def night(rng: random.Random, hue: float) -> Image.Image:
    img = _gradient(_hsv(0.66, 0.8, 0.12), _hsv(0.62 + hue / 10, 0.6, 0.45))
    draw = ImageDraw.Draw(img)
    for _ in range(120):
        x, y, r = rng.uniform(0, S), rng.uniform(0, S * 0.6), rng.uniform(1, 3.5)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 230))
    mx, my = rng.uniform(0.6, 0.8) * S, S * 0.2
    draw.ellipse([mx - 60, my - 60, mx + 60, my + 60], fill=(250, 244, 214))
    draw.polygon([(0, S * 0.78), (S * 0.45, S * 0.7), (S * 0.55, S), (0, S)], fill=(20, 24, 40))
    draw.rectangle([S * 0.55, S * 0.8, S, S], fill=_hsv(0.6, 0.7, 0.3))
    lx = S * 0.2
    draw.polygon([(lx, S * 0.36), (S * 1.1, S * 0.22), (S * 1.1, S * 0.44)], fill=(255, 236, 170))
    for i in range(6):
        y0 = S * (0.4 + i * 0.06)
        draw.rectangle(
            [lx - 26, y0, lx + 26, y0 + S * 0.06], fill=(235, 60, 60) if i % 2 else (245, 245, 245)
        )
    draw.rectangle([lx - 20, S * 0.33, lx + 20, S * 0.4], fill=(255, 226, 120))
    draw.polygon([(lx - 30, S * 0.33), (lx, S * 0.29), (lx + 30, S * 0.33)], fill=(60, 60, 70))
    return img


def lake(rng: random.Random, hue: float) -> Image.Image:
    img = _gradient(_hsv(hue + 0.55, 0.25, 1.0), _hsv(hue + 0.02, 0.45, 1.0))
    draw = ImageDraw.Draw(img)
    water = _gradient(_hsv(hue + 0.55, 0.5, 0.85), _hsv(hue + 0.6, 0.7, 0.45))
    img.paste(water.crop((0, 0, S, S // 3)), (0, int(S * 0.67)))
    for _ in range(14):
        x, h = rng.uniform(-20, S), rng.uniform(140, 300)
        base = S * 0.68
        draw.polygon(
            [(x, base - h), (x - h * 0.22, base), (x + h * 0.22, base)],
            fill=_hsv(0.38, 0.6, rng.uniform(0.2, 0.4)),
        )
    return img


def dunes(rng: random.Random, hue: float) -> Image.Image:
    img = _gradient(_hsv(0.78 + hue / 8, 0.55, 0.6), _hsv(0.03, 0.45, 1.0))
    draw = ImageDraw.Draw(img)
    draw.ellipse([S * 0.62, S * 0.18, S * 0.82, S * 0.38], fill=(255, 236, 200))
    for layer in range(4):
        draw.polygon(
            _ridge(rng, S * (0.55 + layer * 0.1), 40),
            fill=_hsv(0.07 - layer * 0.01, 0.75, 0.95 - layer * 0.12),
        )
    return img


def balloon(rng: random.Random, hue: float) -> Image.Image:
    img = _gradient((120, 190, 255), (215, 238, 255))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        cx, cy = rng.uniform(0, S), rng.uniform(40, S * 0.4)
        for dx in (-50, 0, 45):
            draw.ellipse([cx + dx - 60, cy - 30, cx + dx + 60, cy + 30], fill=(255, 255, 255))
    for i, v in enumerate((0.75, 0.6, 0.45)):
        cx = S * (0.2 + 0.35 * i)
        draw.ellipse(
            [cx - S * 0.6, S * (0.72 + 0.06 * i), cx + S * 0.6, S * 1.6], fill=_hsv(0.3, 0.6, v)
        )
    bx, by, r = rng.uniform(0.35, 0.65) * S, S * 0.36, S * 0.16
    for k in range(5):
        w = r * (1 - k * 0.2)
        draw.ellipse([bx - w, by - r, bx + w, by + r * 1.05], fill=_hsv(hue + k * 0.13, 0.8, 0.95))
    draw.rectangle([bx - 18, by + r * 1.2, bx + 18, by + r * 1.45], fill=(120, 80, 40))
    draw.line([(bx - r * 0.7, by + r * 0.6), (bx - 16, by + r * 1.2)], fill=(90, 60, 30), width=3)
    draw.line([(bx + r * 0.7, by + r * 0.6), (bx + 16, by + r * 1.2)], fill=(90, 60, 30), width=3)
    return img


def shapes(rng: random.Random, hue: float) -> Image.Image:
    img = Image.new("RGB", (S, S), _hsv(hue + 0.1, 0.12, 0.98))
    draw = ImageDraw.Draw(img)
    cx, cy = rng.uniform(0.35, 0.65) * S, rng.uniform(0.35, 0.65) * S
    for i in range(9, 0, -1):
        r = i * S * 0.06
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_hsv(hue + i * 0.07, 0.45, 0.95))
    for _ in range(5):
        x, y, w = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(40, 120)
        draw.rectangle([x, y, x + w, y + w], fill=_hsv(hue + rng.random(), 0.7, 0.9))
    return img


SCENES: dict[str, tuple[str, Callable[[random.Random, float], Image.Image]]] = {
    "mountains": ("a sunset over layered mountains, warm golden light", mountains),
    "night": ("a striped lighthouse on a cliff under a full moon and stars", night),
    "lake": ("a calm lake at dawn with pine trees, pastel sky", lake),
    "dunes": ("desert dunes under a violet evening sky", dunes),
    "balloon": ("a hot-air balloon over rolling green hills, fluffy clouds", balloon),
    "shapes": ("abstract concentric circles in soft pastel colours, bauhaus poster", shapes),
}


def paint(scene: str, seed: int, size: int = 384) -> Image.Image:
    """The picture of `scene` for `seed`, `size` pixels square."""
    rng = random.Random(seed)
    img = SCENES[scene][1](rng, rng.random())
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def png(img: Image.Image) -> bytes:
    """PNG bytes of an image."""
    out = BytesIO()
    img.save(out, "PNG")
    return out.getvalue()
