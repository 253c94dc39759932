"""Parquet files of a dataset source, read by ranges: rows streamed at expansion, image cells
read back by the chunk that captions them.

    pf = open_parquet(opener, data_file)        # its size (a HEAD), its footer (a ranged GET)
    for row, values, (group, index) in parquet_rows(pf, columns, skip=0): ...
    cells = read_cells(opener, refs, max_bytes)   # bytes or FetchError, in order

A parquet file is opened over `RangeFile`, a seekable file whose reads are ranged GETs through
`worker.datasets.Opener` (the storage layer for uploads, the workers' S3 client for `s3://`),
so nothing is downloaded whole: pyarrow reads the footer, then only the column chunks asked
for (each whole: pyarrow has no page-level reads). At expansion the image column is left out
when it holds bytes (`binary`, or a Hugging Face `{bytes, path}` struct): an item records the
file, its row group and its index in it (`parquet: [group, index, column]`), and the chunk
that captions it reads that row group's image column alone (`column.bytes` of a struct), once
for all of its items in the chunk. Rows are numbered from 1, like a CSV's, and `skip` resumes
after a row without reading the row groups before it (their sizes are in the footer).
"""

from __future__ import annotations

import datetime
import decimal
import io
import math
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from janus_batch.storage import StorageError, TransientStorageError
from worker.datasets import DataFile, Opener
from worker.fetch import FetchError

BATCH_ROWS = 1024
"""Rows decoded together at expansion (one batch of the row group in memory at a time)."""

URL = "url"
BYTES = "bytes"
STRUCT = "struct"


class RangeFile(io.RawIOBase):
    """A read-only, seekable view of a file of a source; each read is one ranged GET."""

    def __init__(self, opener: Opener, data_file: DataFile) -> None:
        self._opener = opener
        self._file = data_file
        self._size = opener.size(data_file)
        self._pos = 0
        self._tail = b""
        self.footer_start = self._size
        """Where the footer starts, once known: reads from there are served from the tail."""

    def keep_tail(self, length: int) -> bytes:
        """Read the last `length` bytes (one ranged GET) and keep them: later reads inside
        them from `footer_start` on (the footer, pyarrow's first reads) are served from memory;
        column chunks are read from storage as ever. Returns them."""
        start = max(0, self._size - length)
        tail = bytearray()
        with closing(self._opener.open(self._file, start, self._size - start)) as stream:
            while len(tail) < self._size - start and (data := stream.read(self._size - start)):
                tail += data
        self._tail = bytes(tail) if len(tail) == self._size - start else b""  # short: unkept
        return bytes(tail)

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        length = min(len(buffer), self._size - self._pos)
        if length <= 0:
            return 0
        offset = self._pos - (self._size - len(self._tail))
        footer = self._pos >= self.footer_start or self._pos + len(buffer) >= self._size
        if self._tail and offset >= 0 and footer:  # the footer (a read up to the end), kept
            buffer[:length] = self._tail[offset : offset + length]
            self._pos += length
            return length
        with closing(self._opener.open(self._file, self._pos, length)) as stream:
            view = memoryview(buffer)
            got = 0
            while got < length and (data := stream.read(length - got)):
                view[got : got + len(data)] = data
                got += len(data)
        self._pos += got
        return got


class NotParquet(ValueError):
    """A file of a parquet source that is not parquet (or whose footer is broken)."""


BROKEN = (pa.ArrowException, OSError)
"""What pyarrow raises for a file it cannot decode (a StorageError is none of these)."""


MAX_FOOTER_BYTES = 64 * 1024 * 1024
"""The largest parquet footer (its metadata) read: one over it fails the file, unread."""
TAIL_BYTES = 64 * 1024
"""The end of a parquet file read at open (one ranged GET, as pyarrow's own first read of its
footer): the footer's length is checked in it, and pyarrow's reads in it are served from it."""


class TooLarge(ValueError):
    """A parquet footer or row group over its size limit, not read."""


def open_parquet(opener: Opener, data_file: DataFile) -> pq.ParquetFile:
    """`data_file` opened as parquet (its footer's length checked, then the footer read by
    small ranged reads; each later read is a ranged GET of its own, so nothing stays open).
    StorageError if it cannot be read; NotParquet, naming the file, if it is not parquet or
    its footer is over MAX_FOOTER_BYTES."""
    raw = RangeFile(opener, data_file)
    tail = raw.keep_tail(TAIL_BYTES)[-8:]
    if len(tail) == 8:
        footer = int.from_bytes(tail[:4], "little")
        raw.footer_start = raw.size - 8 - footer
        if tail[4:] == b"PAR1" and footer > MAX_FOOTER_BYTES:
            raise NotParquet(
                f"{data_file.name}: its parquet footer is {footer:,} bytes; the limit is "
                f"{MAX_FOOTER_BYTES:,}"
            )
    try:
        return pq.ParquetFile(pa.PythonFile(raw, mode="r"))
    except BROKEN as exc:
        raise NotParquet(f"{data_file.name} is not a readable parquet file: {exc}") from None


def group_bytes(pf: pq.ParquetFile, group: int, columns: list[str]) -> int:
    """Uncompressed bytes of row group `group` in `columns` (top-level names, or a struct's
    `column.field`), from the footer: what reading them costs, before reading them."""
    meta = pf.metadata.row_group(group)
    total = 0
    for j in range(meta.num_columns):
        chunk = meta.column(j)
        path = chunk.path_in_schema
        if any(path == c or path.startswith(c + ".") for c in columns):
            total += chunk.total_uncompressed_size
    return total


def check_group(pf: pq.ParquetFile, group: int, columns: list[str], limit: int) -> None:
    """TooLarge when row group `group` holds more than `limit` bytes in `columns`."""
    size = group_bytes(pf, group, columns)
    if size > limit:
        raise TooLarge(
            f"row group {group} holds {size:,} bytes (uncompressed) in the columns read; the "
            f"limit is {limit:,} (JANUS_BATCH_MAX_ROW_GROUP_BYTES)"
        )


def image_kind(schema: pa.Schema, column: str) -> str:
    """How `column` holds images: `url` (text: a URL or s3:// reference), `bytes` or `struct`
    (Hugging Face's `{bytes, path}`); ValueError for any other type."""
    kind = schema.field(column).type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return URL
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return BYTES
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        return STRUCT
    raise ValueError(
        f"column '{column}' is {kind}: an image column holds text (URLs), binary or "
        "{bytes, path} structs"
    )


def has_binary(kind: pa.DataType) -> bool:
    """Whether a column type holds bytes at any depth (binary, or a struct, list or map of
    them, such as Hugging Face's image struct or a list of masks)."""
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    if pa.types.is_fixed_size_binary(kind):
        return True
    return any(has_binary(kind.field(i).type) for i in range(kind.num_fields))


def kept_columns(schema: pa.Schema, skip: str | None) -> list[str]:
    """The columns read into each row: all but `skip` (an image column of bytes) and any
    column holding bytes at any depth (bytes are not metadata: never read at expansion)."""
    return [f.name for f in schema if f.name != skip and not has_binary(f.type)]


def parquet_rows(
    pf: pq.ParquetFile, columns: list[str], skip: int = 0, max_group_bytes: int | None = None
) -> Iterator[tuple[int, dict[str, Any], tuple[int, int]]]:
    """(row number from 1, {column: JSON-ready value}, (row group, index in it)) of every row
    after the first `skip`, a batch in memory at a time; TooLarge, before reading it, for a
    row group over `max_group_bytes` in `columns`."""
    row = 0
    for group in range(pf.metadata.num_row_groups):
        rows = pf.metadata.row_group(group).num_rows
        if row + rows <= skip:
            row += rows
            continue
        if max_group_bytes is not None:
            check_group(pf, group, columns, max_group_bytes)
        index = 0
        batches = pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns)
        for batch in batches:
            for values in batch.to_pylist():
                row += 1
                index += 1
                if row <= skip:
                    continue
                yield row, {k: jsonable(v) for k, v in values.items()}, (group, index - 1)
        if not columns:  # no column read: the rows still count
            row += rows - index


def jsonable(value: Any) -> Any:
    """A cell as JSON can hold it (dates as ISO text, decimals and bytes as text; NaN and
    infinities, which JSON has not, as null: pandas writes a missing float as NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return f"<{len(value):,} bytes>"
    return str(value)


def read_cells(
    opener: Opener,
    refs: list[tuple[DataFile, int, int, str, str]],
    max_bytes: int,
    max_group_bytes: int | None = None,
) -> list[bytes | FetchError]:
    """The image bytes of each (file, row group, index, column, name for errors), in order:
    each file's footer is read once and each row group's image column once for all the refs
    into it. Errors are returned per ref (a missing file, a cell without bytes, too big)."""
    out: list[bytes | FetchError | None] = [None] * len(refs)
    by_file: dict[str, list[int]] = {}
    for i, (data_file, *_rest) in enumerate(refs):
        by_file.setdefault(data_file.uri, []).append(i)
    for indexes in by_file.values():
        data_file = refs[indexes[0]][0]
        try:
            pf = open_parquet(opener, data_file)
            groups: dict[tuple[int, str], list[int]] = {}
            for i in indexes:
                groups.setdefault((refs[i][1], refs[i][3]), []).append(i)
            for (group, column), members in groups.items():
                _read_group(pf, group, column, refs, members, out, max_bytes, max_group_bytes)
        except StorageError as exc:
            error = FetchError(
                f"cannot fetch {data_file.name}: {exc}",
                permanent=not isinstance(exc, TransientStorageError),
                storage=True,
            )
            for i in indexes:
                out[i] = out[i] or error
        except ValueError as exc:
            for i in indexes:
                out[i] = out[i] or FetchError(str(exc), permanent=True)
    return [cell if cell is not None else FetchError("not read", permanent=True) for cell in out]


def _read_group(
    pf: pq.ParquetFile,
    group: int,
    column: str,
    refs: list[tuple[DataFile, int, int, str, str]],
    members: list[int],
    out: list[bytes | FetchError | None],
    max_bytes: int,
    max_group_bytes: int | None = None,
) -> None:
    name = refs[members[0]][0].name
    try:
        kind = image_kind(pf.schema_arrow, column)
        path = f"{column}.bytes" if kind == STRUCT else column
        if max_group_bytes is not None:
            check_group(pf, group, [path], max_group_bytes)
        table = pf.read_row_group(group, columns=[path])
        cells = table.column(0)
        if kind == STRUCT:
            cells = pa.chunked_array([chunk.field("bytes") for chunk in cells.chunks])
    except (*BROKEN, ValueError, IndexError) as exc:
        for i in members:
            out[i] = FetchError(f"cannot read {name} row group {group}: {exc}", permanent=True)
        return
    for i in members:
        index, where = refs[i][2], refs[i][4]
        value = cells[index].as_py() if index < len(cells) else None
        if value is None:
            out[i] = FetchError(f"cannot read image {where}: the cell has no bytes", permanent=True)
        elif len(value) > max_bytes:
            out[i] = FetchError(
                f"input {where} is larger than the {max_bytes:,}-byte limit", permanent=True
            )
        else:
            out[i] = bytes(value)
