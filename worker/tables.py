"""Rows of a CSV (or TSV) file, streamed: one row in memory at a time.

    for row, values in csv_rows(stream, "s3://b/urls.csv", max_row_bytes=1 << 20):
        # values: {column: text}, or a BadRow saying why the row cannot be read

The first row names the columns. A row whose field count differs from the header's, a field
over the csv module's limit (131,072 characters, never held whole), or a row (or a line) over
`max_row_bytes` is a `BadRow`, and reading goes on with the next row; a line over it is never
held whole. A file that is not
UTF-8 raises SourceError (a BOM is skipped). Rows are numbered from 1 after the header.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from worker.datasets import ChunkReader
from worker.sources import SourceError

READ_BUFFER = 1024 * 1024


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be read, and why."""

    message: str


def csv_rows(
    stream: Any, name: str, *, max_row_bytes: int, skip: int = 0
) -> Iterator[tuple[int, dict[str, str] | BadRow]]:
    """(row number, {column: value} or BadRow) of every data row after the first `skip`."""
    text = io.TextIOWrapper(
        io.BufferedReader(ChunkReader(stream, name), READ_BUFFER), encoding="utf-8-sig", newline=""
    )
    lines = _Lines(text, max_row_bytes)
    reader = csv.reader(lines, delimiter="\t" if name.lower().endswith(".tsv") else ",")
    try:
        header = _next(reader, name)
        if lines.too_long:
            header = BadRow(lines.take_too_long())
        if header is None:
            return
        if isinstance(header, BadRow):
            raise SourceError(f"{name}: cannot read its header row: {header.message}")
        row = 0
        while (values := _next(reader, name)) is not None:
            if lines.too_long:
                values = BadRow(lines.take_too_long())
            elif isinstance(values, list) and not any(values):
                continue  # a blank line
            row += 1
            if row <= skip:
                continue
            yield row, _named(header, values, max_row_bytes)
    except UnicodeDecodeError as exc:
        raise SourceError(f"{name}: is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


class _Lines:
    """The lines of `text` for csv.reader, none held longer than `limit` characters: a longer
    line is skipped to its end, read in bounded pieces, and handed on as an empty line, with
    `too_long` set for the caller to turn the row into a BadRow (a line of millions of
    fields, or one with no newline at all, never sits in memory)."""

    def __init__(self, text: io.TextIOBase, limit: int) -> None:
        self._text = text
        self._limit = limit
        self.too_long = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._text.readline(self._limit + 1)
        if not line:
            raise StopIteration
        if len(line) <= self._limit or line.endswith(("\n", "\r")):
            return line
        length = len(line)
        while (rest := self._text.readline(READ_BUFFER)) and not rest.endswith(("\n", "\r")):
            length += len(rest)
        self.too_long = length + len(rest)
        return "\n"

    def take_too_long(self) -> str:
        length, self.too_long = self.too_long, 0
        return (
            f"is a line of {length:,} characters; the limit is {self._limit:,} "
            "(JANUS_BATCH_MAX_MANIFEST_LINE_BYTES)"
        )


def _next(reader: Any, name: str) -> list[str] | BadRow | None:
    try:
        return list(next(reader))
    except StopIteration:
        return None
    except csv.Error as exc:
        return BadRow(f"cannot be read ({exc})")


def _named(
    header: list[str], values: list[str] | BadRow, max_row_bytes: int
) -> dict[str, str] | BadRow:
    if isinstance(values, BadRow):
        return values
    if len(values) != len(header):
        return BadRow(f"has {len(values)} fields; the header has {len(header)}")
    size = sum(len(v) for v in values)
    if size > max_row_bytes:
        return BadRow(
            f"is {size:,} characters long; the limit is {max_row_bytes:,} "
            "(JANUS_BATCH_MAX_MANIFEST_LINE_BYTES)"
        )
    return dict(zip(header, values, strict=True))
