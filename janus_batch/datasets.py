"""Dataset sources: which files a job reads (CSV and parquet tables, WebDataset shards) and how
they are named.

    {"csv": "s3://b/lists/urls.csv", "image_column": "url", "key_column": "key"}
    {"parquet": "s3://b/hf/data/", "image_column": "image", "key_column": "id"}
    {"csv": ["s3://b/lists/", "file_..."], "prompt_column": "prompt"}        # generate jobs
    {"webdataset": "s3://b/shards/{00000..00999}.tar"}

A file reference is an `s3://` object, an `s3://` prefix (ending in `/`: every file under it
with the format's extension), an `s3://` glob (`*`, `?`, `[...]` in the key), a brace pattern
(`{00000..00999}` zero-padded ranges and `{a,b}` alternatives) or the id of a file uploaded
with purpose `dataset`. The API checks the shape here (`check_dataset_source`) without reading
any file (so the API needs no pyarrow); the worker lists and reads the files
(`worker.datasets`, `worker.parquet`). No reference may reach into the service's own storage.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

from janus_batch.states import JobKind

FORMATS = ("csv", "parquet", "webdataset")
OPTIONS = ("image_column", "key_column", "prompt_column")
EXTENSIONS = {"csv": (".csv", ".tsv"), "parquet": (".parquet",), "webdataset": (".tar",)}
DEFAULT_IMAGE_COLUMN = "url"
"""img2dataset's name for the image URL column."""
DEFAULT_KEY_COLUMN = "key"
DEFAULT_PROMPT_COLUMN = "prompt"
MAX_REFS = 1000
"""File references one source may list."""
MAX_PATTERN_FILES = 1_000_000
"""Files one brace pattern may name."""
GLOB_CHARS = "*?["
_BRACE_RE = re.compile(r"\{([^{}]*)\}")
_RANGE_RE = re.compile(r"(-?\d+)\.\.(-?\d+)")
_COLUMN_RE = re.compile(r"[^\x00-\x1f]{1,256}")


class DatasetSourceError(ValueError):
    """A dataset source that cannot be accepted; `field` names the part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def source_format(source: dict[str, Any]) -> str | None:
    """The dataset format a stored source names (`csv`, `parquet`, `webdataset`), or None."""
    return next((name for name in FORMATS if name in source), None)


def _alternatives(body: str) -> list[str]:
    """The texts one `{...}` stands for: a numeric range (zero-padded like its bounds) or
    comma-separated alternatives."""
    if match := _RANGE_RE.fullmatch(body):
        low_text, high_text = match.groups()
        low, high = int(low_text), int(high_text)
        width = len(low_text) if low_text.startswith("0") and len(low_text) > 1 else 0
        step = 1 if high >= low else -1
        return [str(n).zfill(width) for n in range(low, high + step, step)]
    if "," in body:
        return body.split(",")
    return ["{" + body + "}"]  # not a pattern: kept literally


def count_braces(pattern: str) -> int:
    """How many names `pattern` expands to (without expanding it)."""
    total = 1
    for body in _BRACE_RE.findall(pattern):
        if match := _RANGE_RE.fullmatch(body):
            low, high = (int(g) for g in match.groups())
            total *= abs(high - low) + 1
        elif "," in body:
            total *= len(body.split(","))
    return total


def expand_braces(pattern: str) -> Iterator[str]:
    """The names `pattern` stands for, in order (`{0..2}` -> 0, 1, 2; `{a,b}`), lazily."""
    pieces = _BRACE_RE.split(pattern)  # literal, body, literal, body, ..., literal
    literals, bodies = pieces[0::2], pieces[1::2]
    choices = [_alternatives(body) for body in bodies]
    for combo in itertools.product(*choices):
        yield "".join(lit + part for lit, part in zip(literals, [*combo, ""], strict=True))


def has_braces(ref: str) -> bool:
    """Whether `ref` holds a brace pattern."""
    return any(_RANGE_RE.fullmatch(b) or "," in b for b in _BRACE_RE.findall(ref))


def has_glob(ref: str) -> bool:
    """Whether the key of `ref` holds glob characters."""
    return any(c in ref for c in GLOB_CHARS)


def literal_prefix(ref: str) -> str:
    """The part of `ref` before its first pattern character (what a listing starts from)."""
    cut = min((i for i, c in enumerate(ref) if c in GLOB_CHARS + "{"), default=len(ref))
    return ref[:cut]


def _refs(raw: Any, field: str) -> list[str]:
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not values:
        raise DatasetSourceError(field, "must be a file reference or a non-empty list of them")
    if len(values) > MAX_REFS:
        raise DatasetSourceError(field, f"lists {len(values):,} references; at most {MAX_REFS:,}")
    refs = []
    for i, value in enumerate(values):
        where = field if isinstance(raw, str) else f"{field}[{i}]"
        if not isinstance(value, str) or not value.strip():
            raise DatasetSourceError(where, "must be a non-empty string")
        refs.append(value.strip())
    return refs


def check_ref(ref: str, field: str, outside_storage: Callable[[str, str, bool], None]) -> str:
    """Check one file reference (see the module doc); `outside_storage(ref, field, listing)`
    raises for a reference into the service's storage."""
    if ref.startswith("file_"):
        return ref
    if not ref.startswith("s3://") or not ref[5:].split("/")[0]:
        raise DatasetSourceError(
            field,
            f"'{ref}' is neither s3://bucket/key (or a prefix, glob or {{a..b}} pattern) nor "
            "the id of an uploaded file (purpose=dataset)",
        )
    if has_braces(ref):
        count = count_braces(ref)
        if count > MAX_PATTERN_FILES:
            raise DatasetSourceError(
                field, f"names {count:,} files; at most {MAX_PATTERN_FILES:,} per pattern"
            )
    pattern = ref.endswith("/") or has_glob(ref) or has_braces(ref)
    outside_storage(literal_prefix(ref) if pattern else ref, field, pattern)
    if not pattern and not ref[5:].partition("/")[2]:
        raise DatasetSourceError(field, f"'{ref}' names no object: end a prefix with '/'")
    return ref


def _column(raw: dict[str, Any], name: str, default: str | None) -> str | None:
    value = raw.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str) or not _COLUMN_RE.fullmatch(value):
        raise DatasetSourceError(f"source.{name}", "must be a column name (1-256 characters)")
    return value


def check_dataset_source(
    raw: dict[str, Any], kind: str, outside_storage: Callable[[str, str, bool], None]
) -> dict[str, Any]:
    """Validate a dataset source; returns what the job stores (references as a list, the
    columns with their defaults)."""
    given = [name for name in FORMATS if name in raw]
    if len(given) != 1:
        raise DatasetSourceError("source", f"give one of {', '.join(FORMATS)}")
    fmt = given[0]
    for name in raw:
        if name != fmt and name not in OPTIONS:
            raise DatasetSourceError(
                f"source.{name}", f"unknown field; a {fmt} source takes {', '.join(OPTIONS)}"
            )
    field = f"source.{fmt}"
    refs = [
        check_ref(ref, field if isinstance(raw[fmt], str) else f"{field}[{i}]", outside_storage)
        for i, ref in enumerate(_refs(raw[fmt], field))
    ]
    if fmt == "webdataset":
        if kind != JobKind.CAPTION:
            raise DatasetSourceError(field, "only caption jobs read WebDataset shards")
        for name in OPTIONS:
            if name in raw:
                raise DatasetSourceError(
                    f"source.{name}",
                    "a WebDataset sample's image is its image member and its key __key__",
                )
        return {fmt: refs}
    if kind == JobKind.CAPTION:
        columns = {
            "image_column": _column(raw, "image_column", DEFAULT_IMAGE_COLUMN),
            "key_column": _column(raw, "key_column", DEFAULT_KEY_COLUMN),
            "prompt_column": _column(raw, "prompt_column", None),
        }
    else:
        if "image_column" in raw:
            raise DatasetSourceError("source.image_column", "a generate job reads prompts")
        columns = {
            "key_column": _column(raw, "key_column", DEFAULT_KEY_COLUMN),
            "prompt_column": _column(raw, "prompt_column", DEFAULT_PROMPT_COLUMN),
        }
    return {fmt: refs, **columns}
