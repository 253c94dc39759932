"""WebDataset shards read as tar streams: one sample (its members, grouped by key) at a time.

    for sample in samples(stream, "s3://b/shards/00001.tar", base=0, max_meta_bytes=1 << 20):
        sample.key, sample.image ("jpg", offset, size), sample.meta, sample.end

A shard is read front to back with the standard library's `tarfile` in stream mode (`r|`):
headers are parsed as they pass, image members are skipped (their bytes stream past, never
kept), metadata members (`json`, `txt`, `cls`, ...) are read and kept. Consecutive members with
the same key (the member name up to the first dot of its file name, WebDataset's `__key__`)
form a sample. An image is located by its data offset and size in the shard, so a worker
reads just those bytes with a ranged GET, and a redelivered expansion restarts at `end` (the
header after the sample) of the last sample it stored, not at the start of the shard.

A shard that stops being a tar archive (truncated, garbage) ends with a `BrokenShard` naming
the byte where it broke; the samples before it stand.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, cast

from janus_batch.formats import IMAGE_EXTENSIONS

BLOCK = tarfile.BLOCKSIZE
MAX_MEMBERS = 256
"""Members one sample may have (`0001.jpg`, `0001.json`, ...); a sample with more fails."""


@dataclass
class Sample:
    """One sample of a shard: its key, its image member, its metadata, where it ends."""

    key: str
    start: int
    """Offset of its first member's header in the shard."""
    end: int = 0
    """Offset just past its last member (where the next header starts)."""
    image: tuple[str, int, int] | None = None
    """(member name, data offset, size) of its first image member."""
    meta: dict[str, Any] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)
    problem: str | None = None
    """Why the sample cannot be used, when it cannot (metadata too large or not JSON)."""
    meta_bytes: int = 0
    """Bytes of the metadata members read so far (at most the sample's limit)."""


@dataclass(frozen=True)
class BrokenShard:
    """The shard stopped being readable at byte `offset`."""

    offset: int
    message: str


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: `dir/0001.seg.png` -> (`dir/0001`, `seg.png`)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def is_image(ext: str) -> bool:
    """Whether a member extension names an image (`jpg`, `png`, ...)."""
    return f".{ext.rpartition('.')[2]}" in IMAGE_EXTENSIONS


def _meta(sample: Sample, ext: str, data: bytes) -> None:
    """Add a metadata member's content: a JSON object's keys at the top level, anything else
    under its extension (text when UTF-8). JSON's non-standard NaN and Infinity read as null."""
    if ext == "json":
        try:
            value = json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            sample.problem = f"its {ext} member is not JSON ({exc})"
            return
        if isinstance(value, dict):
            sample.meta.update(value)
            return
        sample.meta[ext] = value
        return
    try:
        sample.meta[ext] = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        sample.meta[ext] = None  # binary: present, not kept


def _no_constant(name: str) -> None:
    """`NaN`, `Infinity`, `-Infinity` in a sample's json: not JSON numbers, kept as null."""
    return None


def _add(
    tar: tarfile.TarFile,
    sample: Sample,
    member: tarfile.TarInfo,
    ext: str,
    data_offset: int,
    max_meta_bytes: int,
) -> None:
    """Add the member being read to its sample: an image by place, metadata by content. A
    sample's metadata members are read up to `max_meta_bytes` in all, and at most
    MAX_MEMBERS members are listed: past either the sample has a problem and keeps no more."""
    if len(sample.members) >= MAX_MEMBERS:
        sample.problem = f"it has more than {MAX_MEMBERS} members"
        return
    sample.members.append(ext)
    if is_image(ext):
        if sample.image is None:
            sample.image = (member.name, data_offset, member.size)
        return
    sample.meta_bytes += member.size
    if sample.problem is not None:
        return  # unusable already: nothing more is read
    if sample.meta_bytes > max_meta_bytes:
        what = (
            f"its {ext} member is" if member.size > max_meta_bytes else "its metadata members are"
        )
        sample.problem = (
            f"{what} {sample.meta_bytes:,} bytes; the limit is "
            f"{max_meta_bytes:,} (JANUS_BATCH_MAX_MANIFEST_LINE_BYTES)"
        )
        sample.meta.clear()
        return
    extracted = tar.extractfile(member)
    _meta(sample, ext, extracted.read() if extracted else b"")


def samples(
    stream: Any, name: str, *, base: int = 0, max_meta_bytes: int
) -> Iterator[Sample | BrokenShard]:
    """The samples of the shard `stream` (which starts at byte `base` of the shard), in order;
    a `BrokenShard` last if it stops being readable."""
    current: Sample | None = None
    position = base  # where the member being read starts
    counted = _Counted(stream)
    try:
        with tarfile.open(fileobj=cast(IO[bytes], counted), mode="r|") as tar:
            for member in tar:
                position = base + member.offset
                end = base + member.offset_data + -(-member.size // BLOCK) * BLOCK
                if not member.isfile():
                    position = end
                    continue
                key, ext = split_name(member.name)
                if not ext or key.rpartition("/")[2].startswith("."):
                    continue  # not a sample member (no extension, a hidden file)
                if current is not None and current.key != key:
                    yield current
                    current = None
                if current is None:
                    current = Sample(key=key, start=base + member.offset)
                current.end = end
                _add(tar, current, member, ext, base + member.offset_data, max_meta_bytes)
                position = end
    except (tarfile.TarError, EOFError, OSError) as exc:
        if current is not None:
            yield current
        yield BrokenShard(position, f"{type(exc).__name__}: {exc}")
        return
    if current is not None:
        yield current
    if base + counted.read_bytes - position < 2 * BLOCK:  # tarfile stops quietly at a cut header
        yield BrokenShard(position, "it ends without tar's end-of-archive blocks (cut short?)")


class _Counted:
    """A stream that counts the bytes read from it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._stream.read(size)
        self.read_bytes += len(data)
        return data
