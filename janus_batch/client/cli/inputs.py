"""Reading what the user points the CLI at: prompt files, JSONL item files, caption targets.

read_prompts(Path("prompts.txt"))    # one prompt per non-empty line, custom_id = line no.
read_prompts(Path("prompts.jsonl"))  # one item per line ({"prompt": ..., "seed": ...})
with_seeds(items, 7)                 # item i gets seed 7 + i (unless it has its own)
caption_target("s3://photos/2024/")  # -> CaptionTarget("s3_prefix", ...)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from janus_batch.client.cli.common import UsageError
from janus_batch.client.cli.upload import is_image

REMOTE_SCHEMES = ("s3://", "https://", "http://")
LINE = "_line"
"""Key of the file line number read_prompts puts on each item (the caller pops it before
sending: it is the CLI's, to name the line of an item the API refuses)."""


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """Generate items from a .txt (one prompt per non-empty line) or .jsonl file (one item
    per line: an object, or a bare JSON string as the prompt). Items without a custom_id get
    their line number; every item carries its line number under LINE."""
    if not path.is_file():
        raise UsageError(f"{path} is not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None
    items: list[dict[str, Any]] = []
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not jsonl:
            items.append({"prompt": line.strip(), "custom_id": str(lineno), LINE: lineno})
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} line {lineno}: invalid JSON ({exc.msg})") from None
        if isinstance(value, str):
            value = {"prompt": value}
        if not isinstance(value, dict):
            raise UsageError(f'{path} line {lineno}: expected an object like {{"prompt": ...}}')
        value.setdefault("custom_id", str(lineno))
        items.append({**value, LINE: lineno})
    if not items:
        raise UsageError(f"{path} has no prompts")
    return items


def with_seeds(items: list[dict[str, Any]], seed: int | None) -> list[dict[str, Any]]:
    """Item i gets seed `seed + i` (kept if it has its own); unchanged when seed is None."""
    if seed is None:
        return items
    return [{**item, "seed": item.get("seed", seed + i)} for i, item in enumerate(items)]


def write_jsonl(items: list[dict[str, Any]], path: Path) -> Path:
    """Write items as a JSONL manifest."""
    with path.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    return path


@dataclass(frozen=True)
class CaptionTarget:
    """What `janus-batch caption TARGET` captions."""

    kind: Literal["folder", "image", "s3_prefix", "manifest_file", "manifest_uri"]
    value: str


def caption_target(target: str) -> CaptionTarget:
    """Classify a caption target: a local folder or image, an s3:// prefix, a local JSONL
    manifest, or a remote (s3:// or http(s)://) JSONL manifest."""
    if target.startswith(REMOTE_SCHEMES):
        if target.lower().split("?")[0].endswith((".jsonl", ".ndjson")):
            return CaptionTarget("manifest_uri", target)
        if target.startswith("s3://"):
            if not target[5:].split("/")[0]:
                raise UsageError(f"{target} has no bucket: use s3://bucket/prefix/")
            return CaptionTarget("s3_prefix", target)
        raise UsageError(f"{target}: a URL must name a .jsonl manifest")
    path = Path(target).expanduser()
    if path.is_dir():
        return CaptionTarget("folder", str(path))
    if not path.exists():
        raise UsageError(f"{target} does not exist")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return CaptionTarget("manifest_file", str(path))
    if is_image(path):
        return CaptionTarget("image", str(path))
    raise UsageError(
        f"{target}: give a folder of images, an image, a .jsonl manifest or s3://bucket/prefix/"
    )
