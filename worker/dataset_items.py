"""A dataset source expanded into items: CSV rows and WebDataset samples, streamed.

    items = dataset_items(ctx, job, params, last_input, guard)   # NewItems, lazily

Every item records where it came from (`file`, and `row` for a CSV row or `next`, the offset
after the sample, for a shard), so a redelivered expansion resumes after the last stored item
(`worker.datasets.resume`). What an item holds besides the usual `image`/`uri`/`prompt`/`seed`:
- `key`: the dataset's key (the `key_column`, a sample's `__key__`), also its `custom_id`;
- `meta`: the row's other columns, or the sample's `json` keys and `txt`;
- a shard's image: `uri` is the shard and `range` = [offset, size] of the member, read with a
  ranged GET; `image` is `<shard>#<member>`, which every error about it names.

Prompts (`params.prompt`, or `params.prompts` = {name: template}) are templates over the key
and `meta` (`janus_batch.templates`); a caption job's `prompt_column` gives each row its own
prompt instead. A row or sample that cannot become an item (a bad row, a template field it
lacks, a sample without an image, a broken shard, a file that cannot be read) is a failed item
naming the file and row or key; the rest go on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from janus_batch import datasets
from janus_batch.egress import EgressPolicy
from janus_batch.files import file_resolver
from janus_batch.inputs import (
    CaptionParams,
    GenerateParams,
    InvalidInput,
    caption_item,
    check_prompt,
    draw_seed,
    generate_item,
    shown_text,
    storable_problem,
)
from janus_batch.items import NewItem
from janus_batch.models import Job
from janus_batch.storage import StorageError, TransientStorageError
from janus_batch.templates import Template, TemplateError
from worker import parquet, tables, webdataset
from worker.context import Context
from worker.datasets import ChunkReader, DataFile, Opener, list_files, resume
from worker.sources import SourceError

log = logging.getLogger(__name__)

CHECK_EVERY = 1000
"""Items between two calls of the expansion's guard (cancelled? still alive?)."""
MAX_CUSTOM_ID = 512


@dataclass(frozen=True)
class Prompts:
    """A caption job's prompt templates: one (`prompt`) or several by name (`prompts`)."""

    single: Template | None
    named: dict[str, Template] | None
    max_chars: int

    @classmethod
    def of(cls, params: CaptionParams, max_chars: int) -> Prompts:
        """Parse the job's templates; InvalidInput naming the param if one is malformed."""
        try:
            if params.prompts:
                named = {
                    name: Template.parse(text, f"params.prompts.{name}")
                    for name, text in params.prompts.items()
                }
                return cls(None, named, max_chars)
            return cls(Template.parse(params.prompt, "params.prompt"), None, max_chars)
        except TemplateError as exc:
            raise InvalidInput("params", str(exc)) from None

    def render(self, fields: dict[str, Any], own: str | None = None) -> dict[str, Any]:
        """`{"prompt": text}` or `{"prompts": {name: text}}` for an item with these fields;
        `own` (a row's prompt_column) replaces a single template. TemplateError or
        InvalidInput for this item alone."""
        if self.named is not None:
            return {
                "prompts": {
                    name: check_prompt(t.render(fields), f"prompts.{name}", self.max_chars)
                    for name, t in self.named.items()
                }
            }
        assert self.single is not None
        text = own if own else self.single.render(fields)
        return {"prompt": check_prompt(text, "prompt", self.max_chars)}


def dataset_items(
    ctx: Context,
    job: Job,
    params: CaptionParams | GenerateParams,
    last_input: dict[str, Any] | None,
    guard: Callable[[], None],
) -> Iterator[NewItem]:
    """The items of the job's dataset source after `last_input` (the last item stored)."""
    source = job.source or {}
    fmt = datasets.source_format(source)
    assert fmt is not None
    refs = [source[fmt]] if isinstance(source[fmt], str) else list(source[fmt])
    settings = ctx.settings
    ids = [ref for ref in refs if ref.startswith("file_")]
    resolve = file_resolver(ctx.database_url, job.owner, ids, "dataset")
    files = list_files(settings, refs, fmt, resolve, on_page=guard)
    if fmt == "webdataset":
        assert isinstance(params, CaptionParams)
        rows: _Rows = _Shards(ctx, Prompts.of(params, settings.max_prompt_chars))
    elif fmt == "parquet":
        rows = _ParquetFiles(ctx, source, params)
    else:
        rows = _CsvFiles(ctx, source, params)
    opener = Opener(settings, ctx.storage)
    count = 0
    with closing(opener):
        for data_file, start in resume(files, last_input, rows.position):
            guard()
            for item in rows.of_file(opener, data_file, start):
                count += 1
                if count % CHECK_EVERY == 0:
                    guard()
                yield storable(item, settings.max_manifest_line_bytes)


def _fast_text(item: NewItem) -> str | None:
    """The item's input as compact JSON when the item surely passes `storable_problem` (the
    usual row), told at C speed: the JSON has no non-finite number (allow_nan), encodes as
    UTF-8 (no lone surrogate) and holds no escaped NUL, nor do custom_id and error. None
    means "walk it" (the walk names the problem, or finds none: a user's literal
    backslash-u0000 text looks like a NUL here)."""
    try:
        text = json.dumps(item.input, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        text.encode("utf-8")
        for extra in (item.custom_id, item.error):
            if extra is not None:
                extra.encode("utf-8")
                if "\x00" in extra:
                    return None
    except (ValueError, TypeError):  # UnicodeEncodeError is a ValueError
        return None
    return None if "\\u0000" in text else text


def storable(item: NewItem, max_bytes: int | None = None) -> NewItem:
    """`item` if SQL and the JSON manifests can hold all of it; else a failed item naming its
    file, row or sample and what is wrong: a key that is not UTF-8 (a tar member name), a lone
    surrogate or NUL in a column or a metadata value, a number that is not finite. A dataset
    item is held to the rules of an inline one (`janus_batch.inputs.storable_problem`), so
    one bad row fails alone instead of the INSERT of its page (or the manifests at finalize).
    An input over `max_bytes` as JSON (a row of huge columns, a sample of many metadata
    members) fails too, as a CSV row over the limit does: an item row stays bounded."""
    value = item.input
    text = _fast_text(item)
    problem = None if text is not None else (
        storable_problem(value.get("key"), "key")
        or storable_problem(value)
        or storable_problem(item.custom_id, "custom_id")
        or storable_problem(item.error, "error")
    )  # fmt: skip
    if problem is None and max_bytes is not None:
        if text is None:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if len(text) > max_bytes:
            problem = (
                f"its input is {len(text):,} characters as JSON; the limit is {max_bytes:,} "
                "(JANUS_BATCH_MAX_MANIFEST_LINE_BYTES)"
            )
    if problem is None:
        return item
    key = value.get("key")
    shown_key = shown_text(key) if isinstance(key, str) else None
    origin: dict[str, Any] = {n: value[n] for n in ("file", "row", "next") if n in value}
    if origin.get("row") is not None:
        where = f"{value.get('file')} row {origin['row']}"
    else:
        where = f"{value.get('file')} sample {shown_key}"
    custom_id = item.custom_id if storable_problem(item.custom_id) is None else None
    log.info("dataset item refused: %s: %s", where, problem)
    return NewItem(
        input={**origin, "key": shown_key}, custom_id=custom_id, error=f"{where}: {problem}"
    )


class _Rows:
    """How one format turns a file into items."""

    position = ""

    def of_file(self, opener: Opener, data_file: DataFile, start: Any) -> Iterator[NewItem]:
        raise NotImplementedError


def _unreadable(data_file: DataFile, what: str, exc: StorageError, position: str) -> NewItem:
    """The failed item of a file that cannot be read at all (missing, access denied)."""
    if isinstance(exc, TransientStorageError):  # may heal: the sweeper resumes here later
        raise exc
    return NewItem(
        input={"file": data_file.name, position: None},
        error=f"cannot read {what} {data_file.name}: {exc}",
    )


class _Tables(_Rows):
    """Table rows (a CSV's, a parquet file's): an image (caption) or a prompt (generate) per
    row, the other columns kept in `meta`."""

    position = "row"

    def __init__(self, ctx: Context, source: dict[str, Any], params: Any) -> None:
        settings = ctx.settings
        self.settings = settings
        self.params = params
        self.image_column = source.get("image_column")
        self.key_column = source.get("key_column")
        self.prompt_column = source.get("prompt_column")
        self.caption = isinstance(params, CaptionParams)
        self.prompts = Prompts.of(params, settings.max_prompt_chars) if self.caption else None
        if self.caption and params.prompts and self.prompt_column:
            raise InvalidInput(
                "source.prompt_column", "the job asks its own prompts (params.prompts)"
            )
        self.egress = EgressPolicy.from_settings(settings)
        self.storage_url = settings.resolved_storage_url()

    def _needs(self, data_file: DataFile, values: Any, column: str | None) -> None:
        if column is not None and column not in values:
            shown = ", ".join(list(values)[:20])
            raise SourceError(f"{data_file.name} has no column '{column}' (it has: {shown})")

    def _item(
        self,
        data_file: DataFile,
        row: int,
        values: dict[str, Any] | tables.BadRow,
        embedded: dict[str, Any] | None = None,
    ) -> NewItem:
        """The item of one row; `embedded` is where its image lies inside the file (a
        parquet cell), instead of the image column's reference."""
        origin = {"file": data_file.name, "row": row}
        where = f"{data_file.name} row {row}"
        if isinstance(values, tables.BadRow):
            return NewItem(input=origin, error=f"{where}: {values.message}")
        image_column = self.image_column if self.caption else None
        prompt_column = self.prompt_column
        if embedded is None:
            self._needs(data_file, values, image_column)
        self._needs(data_file, values, prompt_column)
        key = values.get(self.key_column) if self.key_column else None
        key = str(key) if key is not None and key != "" else None
        meta = {k: v for k, v in values.items() if k != image_column}
        custom_id = _custom_id(key)
        try:
            if key is not None and custom_id is None:
                raise InvalidInput(where, f"its key is over {MAX_CUSTOM_ID} characters")
            if self.caption:
                return self._caption(values, key, custom_id, meta, origin, where, embedded)
            made = generate_item(
                {"prompt": values[prompt_column or ""], "custom_id": custom_id},
                self.params,
                where=where,
                max_prompt_chars=self.settings.max_prompt_chars,
                max_n=self.settings.max_n,
            )
        except (InvalidInput, TemplateError) as exc:
            return NewItem(
                input={**origin, "key": key}, custom_id=custom_id, error=_named(str(exc), where)
            )
        return NewItem(
            input={**made.input, "key": key, "meta": meta, **origin}, custom_id=custom_id
        )

    def _caption(
        self,
        values: dict[str, str],
        key: str | None,
        custom_id: str | None,
        meta: dict[str, str],
        origin: dict[str, Any],
        where: str,
        embedded: dict[str, Any] | None = None,
    ) -> NewItem:
        assert self.prompts is not None and self.image_column is not None
        own = values.get(self.prompt_column) if self.prompt_column else None
        prompts = self.prompts.render({**meta, "key": key}, own)
        if embedded is None:
            made = caption_item(
                {"image": values[self.image_column], "custom_id": custom_id},
                self.params,
                where=f"{where} {self.image_column}",
                max_prompt_chars=self.settings.max_prompt_chars,
                storage_url=self.storage_url,
                egress=self.egress,
            )
            image = {"image": made.input["image"], "uri": made.input["uri"]}
            seed = made.input["seed"]
        else:
            image, seed = embedded, draw_seed()
        value = {
            **image,
            **prompts,
            "seed": seed,
            "key": key,
            "meta": meta,
            **origin,
        }
        return NewItem(input=value, custom_id=custom_id)


class _CsvFiles(_Tables):
    """CSV rows."""

    def of_file(self, opener: Opener, data_file: DataFile, start: Any) -> Iterator[NewItem]:
        try:
            stream = opener.open(data_file)
        except StorageError as exc:
            yield _unreadable(data_file, "file", exc, self.position)
            return
        with closing(stream):
            rows = tables.csv_rows(
                stream,
                data_file.name,
                max_row_bytes=self.settings.max_manifest_line_bytes,
                skip=start or 0,
            )
            for row, values in rows:
                yield self._item(data_file, row, values)


class _ParquetFiles(_Tables):
    """Parquet rows, a batch at a time; an image held in the file (bytes, an HF struct) is
    not read here: the item records its row group and index (`worker.parquet`)."""

    def of_file(self, opener: Opener, data_file: DataFile, start: Any) -> Iterator[NewItem]:
        try:
            pf = parquet.open_parquet(opener, data_file)
        except StorageError as exc:
            yield _unreadable(data_file, "file", exc, self.position)
            return
        except parquet.NotParquet as exc:
            yield NewItem(input={"file": data_file.name, self.position: None}, error=str(exc))
            return
        done = start or 0
        try:
            for item in self._rows(pf, data_file, done):
                done = item.input.get("row") or done
                yield item
        except StorageError as exc:
            yield _unreadable(data_file, "file", exc, self.position)
        except parquet.TooLarge as exc:  # never read: the rest of the file fails with it
            yield NewItem(
                input={"file": data_file.name, self.position: None},
                error=f"parquet file {data_file.name} is not read after row {done:,}: {exc}",
            )
        except parquet.BROKEN as exc:  # a row group that cannot be decoded: the rest of it
            log.warning("%s broken after row %d: %s", data_file.name, done, exc)
            yield NewItem(
                input={"file": data_file.name, self.position: None},
                error=f"parquet file {data_file.name} cannot be read after row {done:,}: {exc}",
            )

    def _rows(self, pf: Any, data_file: DataFile, skip: int) -> Iterator[NewItem]:
        schema = pf.schema_arrow
        names = schema.names
        image_column = self.image_column if self.caption else None
        self._needs(data_file, names, image_column)
        self._needs(data_file, names, self.prompt_column)
        kind = parquet.URL
        if image_column is not None:
            try:
                kind = parquet.image_kind(schema, image_column)
            except ValueError as exc:
                raise SourceError(f"{data_file.name}: {exc}") from None
        inside = kind != parquet.URL
        columns = parquet.kept_columns(schema, image_column if inside else None)
        limit = self.settings.max_row_group_bytes
        for row, values, (group, index) in parquet.parquet_rows(pf, columns, skip, limit):
            embedded = None
            if inside:
                embedded = {
                    "image": f"{data_file.name}#row={row}",
                    "uri": data_file.uri,
                    "parquet": [group, index, image_column],
                }
            yield self._item(data_file, row, values, embedded)


class _Shards(_Rows):
    """WebDataset samples: the image member of each, read from inside its shard."""

    position = "next"

    def __init__(self, ctx: Context, prompts: Prompts) -> None:
        self.settings = ctx.settings
        self.prompts = prompts

    def of_file(self, opener: Opener, data_file: DataFile, start: Any) -> Iterator[NewItem]:
        base = start or 0
        try:
            stream = opener.open(data_file, base)
        except StorageError as exc:
            yield _unreadable(data_file, "shard", exc, self.position)
            return
        with closing(stream):
            reader = ChunkReader(stream, data_file.name)
            limit = self.settings.max_manifest_line_bytes
            for sample in webdataset.samples(
                reader, data_file.name, base=base, max_meta_bytes=limit
            ):
                if isinstance(sample, webdataset.BrokenShard):
                    log.warning(
                        "%s broken at byte %d: %s", data_file.name, sample.offset, sample.message
                    )
                    yield NewItem(
                        input={"file": data_file.name, "next": None},
                        error=f"shard {data_file.name} is not a readable tar archive after byte "
                        f"{sample.offset:,}: {sample.message}",
                    )
                    return
                yield self._item(data_file, sample)

    def _item(self, shard: DataFile, sample: webdataset.Sample) -> NewItem:
        where = f"{shard.name} sample {sample.key}"
        origin = {"file": shard.name, "next": sample.end, "key": sample.key}
        custom_id = _custom_id(sample.key)
        try:
            if custom_id is None:
                raise InvalidInput(where, f"its key is over {MAX_CUSTOM_ID} characters")
            if sample.problem is not None:
                raise InvalidInput(where, sample.problem)
            if sample.image is None:
                raise InvalidInput(
                    where, f"has no image member (its members: {', '.join(sample.members)})"
                )
            fields = {"key": sample.key, **sample.meta, "__key__": sample.key}
            prompts = self.prompts.render(fields)
        except (InvalidInput, TemplateError) as exc:
            return NewItem(
                input={**origin, "meta": sample.meta},
                custom_id=custom_id,
                error=_named(str(exc), where),
            )
        member, offset, size = sample.image
        value = {
            "image": f"{shard.name}#{member}",
            "uri": shard.uri,
            "range": [offset, size],
            **prompts,
            "seed": draw_seed(),
            "meta": sample.meta,
            **origin,
        }
        return NewItem(input=value, custom_id=custom_id)


def _custom_id(key: str | None) -> str | None:
    """The custom id of an item with this dataset key: the key, unless it is too long."""
    return key if key is not None and len(key) <= MAX_CUSTOM_ID else None


def _named(message: str, where: str) -> str:
    """`message` naming the row or sample it is about."""
    return message if message.startswith(where) else f"{where}: {message}"
