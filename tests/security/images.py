"""Hostile images for tests, made in microseconds."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` RGB pixels but whose data is a few bytes:
    opening it is free, decoding it fails as truncated. A guard that refuses it by size
    (and not as truncated) has read the header only."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )
