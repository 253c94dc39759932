"""`results.parquet`: one row per item of a finished job, written at finalize next to
results.jsonl, streaming (a row group per page of items: memory flat at 10 million rows).

Columns, in order:
- `idx` (int64), `custom_id`, `key` (the dataset key, or null), `image` (a caption job's input
  image as results.jsonl names it) or `prompt` (a generate job's);
- a caption job: `caption`, or one `caption_<name>` column per prompt of `params.prompts`;
  a generate job: `images`, a list of `{key, member, seed}` structs (the stored image's key,
  its seed; for a job writing WebDataset shards `key` is the shard and `member` the image's
  name in it, else `member` is null);
- `model`, `params` (the job's params as JSON text), `status`, `error` (null when succeeded).

    with ResultsTable(path, job) as table:
        for item in items: table.add(item)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import pyarrow as pa
import pyarrow.parquet as pq

from janus_batch.models import Item, Job
from janus_batch.states import ItemStatus, JobKind

NAME = "results.parquet"
CONTENT_TYPE = "application/vnd.apache.parquet"
ROW_GROUP = 1000
"""Rows buffered before a row group is written."""

_IMAGES = pa.list_(pa.struct([("key", pa.string()), ("member", pa.string()), ("seed", pa.int64())]))


class ResultsTable:
    """A `results.parquet` being written to `path`, a row group at a time."""

    def __init__(self, path: Path, job: Job, row_group: int = ROW_GROUP) -> None:
        self.caption = job.kind == JobKind.CAPTION
        prompts = (job.params or {}).get("prompts") if self.caption else None
        self.prompt_names: list[str] = list(prompts or {})
        fields: list[tuple[str, pa.DataType]] = [
            ("idx", pa.int64()),
            ("custom_id", pa.string()),
            ("key", pa.string()),
            ("image" if self.caption else "prompt", pa.string()),
        ]
        if not self.caption:
            fields.append(("images", _IMAGES))
        elif self.prompt_names:
            fields.extend((f"caption_{name}", pa.string()) for name in self.prompt_names)
        else:
            fields.append(("caption", pa.string()))
        fields += [
            ("model", pa.string()),
            ("params", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
        ]
        self.schema = pa.schema(fields)
        self.model = job.model
        self.params = json.dumps(job.params or {}, sort_keys=True, separators=(",", ":"))
        self.row_group = row_group
        self.rows = 0
        self._columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        self._writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")

    def add(self, item: Item) -> None:
        """One item's row (written with the next full row group)."""
        value = item.input or {}
        result = item.result or {}
        succeeded = item.status == ItemStatus.SUCCEEDED
        row: dict[str, Any] = {
            "idx": item.idx,
            "custom_id": item.custom_id,
            "key": _text(value.get("key")),
            "model": self.model,
            "params": self.params,
            "status": str(item.status),
            "error": None if succeeded else item.error,
        }
        if self.caption:
            row["image"] = _text(value.get("image"))
            if self.prompt_names:
                captions = result.get("captions") or {}
                for name in self.prompt_names:
                    row[f"caption_{name}"] = captions.get(name)
            else:
                row["caption"] = result.get("caption")
        else:
            row["prompt"] = _text(value.get("prompt"))
            images = result.get("images") or []
            row["images"] = [
                {"key": entry.get("key"), "member": entry.get("member"), "seed": entry.get("seed")}
                for entry in images
                if isinstance(entry, dict)
            ]
        for name, column in self._columns.items():
            column.append(row.get(name))
        self.rows += 1
        if len(self._columns["idx"]) >= self.row_group:
            self._flush()

    def _flush(self) -> None:
        if self._columns["idx"]:
            self._writer.write_table(pa.table(self._columns, schema=self.schema))
            self._columns = {name: [] for name in self.schema.names}

    def close(self) -> None:
        """Write the last row group and the footer."""
        try:
            self._flush()
        finally:
            self._writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _text(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else str(value)
