"""Validating what users send (inline items, manifest lines, job params) into item inputs.

Shared by the API (inline items) and the worker's expand task (manifest lines), so a
manifest line and an inline item are held to the same rules and produce the same rows.
Every error names the field it is about, e.g. `items[3].n: must be <= 16`. An http(s)
reference is held to the egress policy as far as it can be told without DNS (the scheme, a
literal address, a loopback name): `items[0].image: 'http://...' is refused by the egress
policy: only https URLs are fetched`; the worker checks the rest when it connects.

An item may also stand for an input the client could not send (an empty or unreadable file of
a folder it uploads): `{"custom_id": "sub/empty.jpg", "error": "empty file (0 bytes)"}`. It
becomes a failed item (`not sent by the client: empty file (0 bytes)`) that never runs, so the
job's counts and `errors.jsonl` name every input the user gave (`not_sent_item`).
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from janus_batch import datasets, shards
from janus_batch.egress import EgressPolicy, EgressRefused
from janus_batch.formats import ImageFormat
from janus_batch.items import NewItem
from janus_batch.settings import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS_LIMIT, get_settings
from janus_batch.states import JobKind

DEFAULT_QUESTION = "Describe this image."
MAX_PROMPTS = 8
"""Prompts a caption job may ask of each image (params.prompts)."""
PROMPT_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
RESERVED_PROMPT_NAMES = frozenset({"__key__", "custom_id", "idx", "status", "error", "key"})
"""Column names the outputs use themselves, so no prompt may take them."""
IMAGE_SCHEMES = ("s3", "https", "http")
FILE_ID_PREFIX = "file_"
MAX_SEED = 2**63 - 1
MAX_INT32 = 2**31 - 1
"""Upper bound of top_k: the engine turns it into a tensor (n is bounded by max_n)."""
MAX_NOT_SENT_ERROR = 500
"""Longest reason a client gives for an input it could not send."""


class InvalidInput(ValueError):
    """A user input that cannot be accepted; `field` says where, the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class TooLarge(InvalidInput):
    """An input over a size limit (too many items, an oversized upload)."""


def _text_problem(text: str) -> str | None:
    """Why a database could not store `text` (NUL characters, lone surrogates), or None."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (lone surrogate)"
    return None


def shown_text(text: str) -> str:
    """`text` safe to store and print: bytes that are not UTF-8 (a tar member name read with
    surrogate escapes) as `\\xff`, lone surrogates as `\\ud800`, NUL as `\\x00`."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def storable_problem(value: Any, field: str = "") -> str | None:
    """Why a database or a JSON manifest could not hold `value` (a JSON-like value from a
    dataset: a key, a row's columns, a sample's metadata), or None: the first string or object
    key that `_text_problem` refuses, or a number that is not finite, named by its path
    (`meta.caption: is not valid Unicode (lone surrogate)`). The same rules inline items are
    held to by `_Strict`; walked without recursion, however deep the value."""
    stack: list[tuple[str, Any]] = [(field, value)]
    while stack:
        path, node = stack.pop()
        problem: str | None = None
        if isinstance(node, str):
            problem = _text_problem(node)
        elif isinstance(node, float) and not math.isfinite(node):
            problem = f"{node} is not a JSON number (not finite)"
        elif isinstance(node, dict):
            for name in node:
                if isinstance(name, str) and (bad := _text_problem(name)):
                    problem = f"a field name {bad}"
                    break
            children = [(f"{path}.{name}" if path else str(name), v) for name, v in node.items()]
            stack.extend(reversed(children))
        elif isinstance(node, list | tuple):
            stack.extend(reversed([(f"{path}[{i}]", v) for i, v in enumerate(node)]))
        if problem is not None:
            return f"{shown_text(path)}: {problem}" if path else problem
    return None


def check_text(text: str, field: str) -> str:
    """Return `text` unless a database could not store it."""
    if problem := _text_problem(text):
        raise InvalidInput(field, problem)
    return text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        if isinstance(value, str) and (problem := _text_problem(value)):
            raise ValueError(problem)
        return value


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
TopK = Annotated[int, Field(ge=1, le=MAX_INT32)]
MAX_CUSTOM_ID = 512
CustomId = Annotated[str, Field(min_length=1, max_length=MAX_CUSTOM_ID)]


def custom_id_of(raw: Any) -> str | None:
    """The custom_id a raw item gives if it is a valid one, else None: a refused manifest line
    keeps it, so `errors.jsonl` and `--resume` name the failed item as the user did."""
    custom_id = raw.get("custom_id") if isinstance(raw, dict) else None
    if not isinstance(custom_id, str):
        return None
    custom_id = custom_id.strip()
    if not 0 < len(custom_id) <= MAX_CUSTOM_ID or _text_problem(custom_id):
        return None
    return custom_id


class CaptionParams(_Strict):
    """Job-wide defaults of a caption job. `parse_params` fills an unset max_new_tokens from
    the JANUS_BATCH_MAX_NEW_TOKENS setting. `prompts` ({name: prompt}) asks several
    questions of every image instead of `prompt`: each becomes a column of the outputs.
    Over a dataset source both are templates over the item's columns (`janus_batch.templates`)."""

    prompt: str = Field(default=DEFAULT_QUESTION, min_length=1)
    prompts: dict[str, str] | None = None
    max_new_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    temperature: Temperature = 0.0
    top_p: TopP = 1.0

    @model_serializer(mode="wrap")
    def _one_of_prompt_and_prompts(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Stored and shown with `prompt` or `prompts`, whichever the job asks."""
        data = handler(self)
        data.pop("prompt" if self.prompts else "prompts", None)
        return data

    @field_validator("prompts", mode="after")
    @classmethod
    def _named_prompts(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if not 1 <= len(value) <= MAX_PROMPTS:
            raise ValueError(f"must name between 1 and {MAX_PROMPTS} prompts")
        for name, text in value.items():
            if not PROMPT_NAME_RE.fullmatch(name) or name in RESERVED_PROMPT_NAMES:
                raise ValueError(
                    f"'{name[:80]}' is not a prompt name (letters, digits and _, at most 64, "
                    f"not {', '.join(sorted(RESERVED_PROMPT_NAMES))})"
                )
            if problem := _text_problem(text):
                raise ValueError(f"{name}: {problem}")
            if not text.strip():
                raise ValueError(f"{name}: must not be empty")
        return value


class OutputParams(_Strict):
    """How a generate job stores its images (`params.output`): WebDataset shards of
    `images_per_shard` images (`<key>.<ext>` + `<key>.json` per image) instead of one object
    per image (`janus_batch.shards`)."""

    format: Literal["webdataset"]
    images_per_shard: int = Field(
        default=shards.DEFAULT_IMAGES_PER_SHARD, ge=1, le=shards.MAX_IMAGES_PER_SHARD
    )


class GenerateParams(_Strict):
    """Job-wide defaults of a generate job."""

    model_config = ConfigDict(use_enum_values=True)  # params.format is stored as plain text

    n: int = Field(default=1, ge=1)
    cfg_weight: float = Field(default=5.0, ge=1.0, le=50.0)
    temperature: Temperature = 1.0
    top_k: TopK | None = None
    top_p: TopP | None = None
    format: ImageFormat = Field(default=ImageFormat.PNG, validate_default=True)
    output: OutputParams | None = None

    @model_serializer(mode="wrap")
    def _output_when_set(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Stored and shown with `output` only when the job asks for shards."""
        data = handler(self)
        if self.output is None:
            data.pop("output", None)
        return data


class CaptionItemIn(_Strict):
    """One caption item as sent: an image reference and optional question, sampling seed and
    custom id."""

    image: str = Field(min_length=1, max_length=4096)
    prompt: str | None = Field(default=None, min_length=1)
    seed: Seed | None = None
    custom_id: CustomId | None = None


class GenerateItemIn(_Strict):
    """One generate item as sent: a prompt and optional overrides of the job params."""

    prompt: str = Field(min_length=1)
    n: int | None = Field(default=None, ge=1)
    seed: Seed | None = None
    cfg_weight: float | None = Field(default=None, ge=1.0, le=50.0)
    temperature: Temperature | None = None
    top_k: TopK | None = None
    top_p: TopP | None = None
    custom_id: CustomId | None = None


class NotSentItemIn(_Strict):
    """An input the client could not send, named by its custom id, with the reason."""

    custom_id: CustomId
    error: str = Field(min_length=1, max_length=MAX_NOT_SENT_ERROR)


NOT_SENT_PREFIX = "not sent by the client: "
"""How the error of a not-sent item starts (its class is `input`: it never ran)."""


def not_sent_item(raw: Any, where: str) -> NewItem | None:
    """The failed item of a raw item that carries `error` (an input the client could not
    send: `{"custom_id": ..., "error": ...}`, nothing else); None for any other raw item."""
    if not isinstance(raw, dict) or "error" not in raw:
        return None
    if extra := sorted(set(raw) - set(NotSentItemIn.model_fields)):
        raise InvalidInput(
            f"{where}.{extra[0]}",
            "an item with `error` stands for an input the client could not send: it takes "
            "only custom_id and error",
        )
    try:
        item = NotSentItemIn.model_validate(raw)
    except ValidationError as err:
        raise _first_error(err, where) from None
    return NewItem(input={}, custom_id=item.custom_id, error=NOT_SENT_PREFIX + item.error)


def _first_error(err: ValidationError, where: str) -> InvalidInput:
    first = err.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    field = f"{where}.{loc}" if where and loc else (where or loc)
    return InvalidInput(field, first["msg"])


def parse_params(
    kind: str,
    raw: dict[str, Any] | None,
    *,
    max_n: int,
    default_max_new_tokens: int | None = None,
) -> CaptionParams | GenerateParams:
    """Validate a job's `params` for its kind.

    A caption job that leaves `max_new_tokens` unset gets `default_max_new_tokens` (the
    JANUS_BATCH_MAX_NEW_TOKENS setting) when given, else DEFAULT_MAX_NEW_TOKENS; the value
    is recorded in the job's params, so re-parsing stored params never changes it.
    """
    if kind == JobKind.CAPTION and isinstance(raw, dict) and "output" in raw:
        raise InvalidInput(
            "params.output", "only a generate job writes images (WebDataset shards or objects)"
        )
    try:
        params = (CaptionParams if kind == JobKind.CAPTION else GenerateParams).model_validate(
            raw or {}
        )
    except ValidationError as err:
        raise _first_error(err, "params") from None
    if isinstance(params, GenerateParams) and params.n > max_n:
        raise InvalidInput("params.n", f"must be between 1 and {max_n}")
    if (
        isinstance(params, GenerateParams)
        and params.output is not None
        and params.output.images_per_shard < params.n
    ):
        raise InvalidInput(
            "params.output.images_per_shard",
            f"must be at least params.n ({params.n}): a shard holds whole items",
        )
    if isinstance(params, CaptionParams) and params.prompts and "prompt" in params.model_fields_set:
        raise InvalidInput("params.prompts", "give prompt or prompts, not both")
    if (
        isinstance(params, CaptionParams)
        and default_max_new_tokens is not None
        and "max_new_tokens" not in params.model_fields_set
    ):
        params = params.model_copy(update={"max_new_tokens": default_max_new_tokens})
    return params


def check_image_ref(
    ref: str, field: str, what: str = "image reference", *, egress: EgressPolicy | None = None
) -> str:
    """Accept s3://bucket/key, http(s)://host/path or an uploaded file id; return it. An
    http(s) URL must pass `egress.check_url` (default: the policy of the process's settings)."""
    if ref.startswith(FILE_ID_PREFIX):
        return ref
    try:
        parsed = urlsplit(ref)
    except ValueError as err:  # e.g. an unbalanced IPv6 bracket
        raise InvalidInput(field, f"invalid URI '{ref}' ({err})") from None
    if parsed.scheme not in IMAGE_SCHEMES:
        shown = parsed.scheme or "none"
        raise InvalidInput(
            field,
            f"unsupported {what} scheme '{shown}': use s3://bucket/key, "
            "https://host/path or an uploaded file id (file_...)",
        )
    if not parsed.netloc or (parsed.scheme == "s3" and not parsed.path.strip("/")):
        raise InvalidInput(field, f"incomplete URI '{ref}'")
    if parsed.scheme != "s3":
        try:
            (egress or EgressPolicy.from_settings(get_settings())).check_url(ref, parsed)
        except EgressRefused as exc:  # told from the URL alone: no DNS, nothing internal
            raise InvalidInput(field, f"'{ref}' is {exc}: {exc.reason}") from None
    return ref


STORAGE_REF_HINT = (
    "points into this service's own storage; upload the file (POST /v1/files) and use its file id"
)


def _s3_location(uri: str) -> tuple[str, list[str]] | None:
    """(bucket in lower case, key segments) of an `s3://` URI, None for any other URI.

    Segments are normalized the way a lenient S3 server or proxy might: empty and `.`
    segments dropped, `..` resolved. The scheme is matched case-insensitively.
    """
    if uri[:5].lower() != "s3://":
        return None
    bucket, _, key = uri[5:].partition("/")
    parts: list[str] = []
    for part in key.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return bucket.lower(), parts


def points_into_storage(ref: str, storage_url: str | None, *, listing: bool = False) -> bool:
    """Whether the user-supplied `ref` (an `s3://` URI) reaches into the service's own storage
    at `storage_url` (`s3://bucket/prefix`); never for other schemes or local storage.

    With `listing=True` `ref` is a listing prefix: it is refused as well when the storage lies
    under it (`s3://bucket/` or `s3://bucket/jo` when the storage is `s3://bucket/jobs`).
    """
    if not storage_url:
        return False
    store = _s3_location(storage_url.strip())
    ref_loc = _s3_location(ref.strip())
    if store is None or ref_loc is None:
        return False
    (store_bucket, store_parts), (bucket, parts) = store, ref_loc
    if bucket != store_bucket:
        return False
    if parts[: len(store_parts)] == store_parts:
        return True  # the reference is the storage location or lies under it
    if not listing:
        return False
    # A listing prefix matches keys by string prefix: it reaches the storage when the
    # storage prefix starts with it (the raw text or its normalized form).
    store_prefix = "/".join(store_parts)
    raw_key = ref.strip()[5:].partition("/")[2]
    return any(store_prefix.startswith(text) for text in (raw_key, "/".join(parts)))


def check_outside_storage(
    ref: str, field: str, storage_url: str | None, *, listing: bool = False
) -> str:
    """Return `ref` unless it points into this service's own storage (InvalidInput)."""
    if points_into_storage(ref, storage_url, listing=listing):
        raise InvalidInput(field, f"'{ref.strip()}' {STORAGE_REF_HINT}")
    return ref


def check_request_refs(
    kind: str, items: Any, source: dict[str, Any] | None, storage_url: str | None
) -> None:
    """Refuse user-supplied `s3://` references into the service's own storage in a job
    request (inline caption images, source.manifest, source.s3_prefix) before anything else
    is looked at; uploaded files are used by file id instead."""
    if isinstance(items, list) and kind == JobKind.CAPTION:
        for i, raw in enumerate(items):
            image = raw.get("image") if isinstance(raw, dict) else raw
            if isinstance(image, str):
                check_outside_storage(image, f"items[{i}].image", storage_url)
    if isinstance(source, dict):
        for name in SOURCE_FIELDS:
            value = source.get(name)
            if isinstance(value, str):
                check_outside_storage(
                    value, f"source.{name}", storage_url, listing=name == "s3_prefix"
                )


def draw_seed() -> int:
    """A seed for an item sent without one (recorded in its input)."""
    return secrets.randbits(63)


def check_prompt(text: str, field: str, max_chars: int) -> str:
    if not text.strip():
        raise InvalidInput(field, "must not be empty")
    if len(text) > max_chars:
        raise InvalidInput(field, f"is {len(text)} characters; the limit is {max_chars}")
    return text


def caption_item(
    raw: Any,
    params: CaptionParams,
    *,
    where: str,
    max_prompt_chars: int,
    resolve_file: Callable[[str, str], str] | None = None,
    storage_url: str | None = None,
    egress: EgressPolicy | None = None,
) -> NewItem:
    """Validate one caption item into a row input `{image, uri, prompt, seed}`; a missing
    seed is drawn, so a sampled caption (temperature > 0) can be made again.

    `resolve_file(file_id, field)` turns an uploaded file id into a fetchable URI
    (`storage:<key>`), raising InvalidInput when the id is unknown to the caller. With
    `storage_url` (the service's storage) an `s3://` image inside it is refused. An http(s)
    image is checked by `egress` (default: the settings' policy).
    """
    if isinstance(raw, str):
        raw = {"image": raw}
    if not isinstance(raw, dict):
        raise InvalidInput(where, 'must be an object like {"image": "s3://..."}')
    if (not_sent := not_sent_item(raw, where)) is not None:
        return not_sent
    try:
        item = CaptionItemIn.model_validate(raw)
    except ValidationError as err:
        raise _first_error(err, where) from None
    image = check_image_ref(item.image, f"{where}.image", egress=egress)
    check_outside_storage(image, f"{where}.image", storage_url)
    uri = image
    if image.startswith(FILE_ID_PREFIX):
        if resolve_file is None:
            raise InvalidInput(f"{where}.image", "file ids are not accepted here")
        uri = resolve_file(image, f"{where}.image")
    seed = item.seed if item.seed is not None else draw_seed()
    value: dict[str, Any] = {"image": image, "uri": uri}
    if params.prompts:
        if item.prompt is not None:
            raise InvalidInput(
                f"{where}.prompt", "the job asks several prompts (params.prompts) of every image"
            )
        value["prompts"] = check_prompts(params.prompts, "params.prompts", max_prompt_chars)
    else:
        value["prompt"] = check_prompt(
            item.prompt or params.prompt, f"{where}.prompt", max_prompt_chars
        )
    value["seed"] = seed
    return NewItem(input=value, custom_id=item.custom_id)


def check_prompts(prompts: dict[str, str], field: str, max_chars: int) -> dict[str, str]:
    """Return `prompts` ({name: text}) when every text is within `max_chars`."""
    return {
        name: check_prompt(text, f"{field}.{name}", max_chars) for name, text in prompts.items()
    }


def generate_item(
    raw: Any, params: GenerateParams, *, where: str, max_prompt_chars: int, max_n: int
) -> NewItem:
    """Validate one generate item into a self-contained row input; a missing seed is drawn."""
    if isinstance(raw, str):
        raw = {"prompt": raw}
    if not isinstance(raw, dict):
        raise InvalidInput(where, 'must be an object like {"prompt": "a red fox"}')
    if (not_sent := not_sent_item(raw, where)) is not None:
        return not_sent
    try:
        item = GenerateItemIn.model_validate(raw)
    except ValidationError as err:
        raise _first_error(err, where) from None
    prompt = check_prompt(item.prompt, f"{where}.prompt", max_prompt_chars)
    n = item.n if item.n is not None else params.n
    if n > max_n:
        raise InvalidInput(f"{where}.n", f"must be between 1 and {max_n}")
    value = {
        "prompt": prompt,
        "n": n,
        "seed": item.seed if item.seed is not None else draw_seed(),
        "cfg_weight": item.cfg_weight if item.cfg_weight is not None else params.cfg_weight,
        "temperature": item.temperature if item.temperature is not None else params.temperature,
        "top_k": item.top_k if item.top_k is not None else params.top_k,
        "top_p": item.top_p if item.top_p is not None else params.top_p,
    }
    return NewItem(input=value, custom_id=item.custom_id)


def parse_json_line(line: bytes | str) -> tuple[Any, str | None]:
    """One JSONL line: (value, None), or (None, why it cannot be read). Besides syntax
    errors this catches what json.loads raises on hostile input: nesting deep enough to
    overflow the recursion limit and integers longer than Python converts."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            return None, "is not UTF-8"
    try:
        return json.loads(line), None
    except json.JSONDecodeError as err:
        return None, f"invalid JSON ({err.msg})"
    except RecursionError:
        return None, "invalid JSON (nested too deeply)"
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        return None, f"invalid JSON ({err})"


def iter_jsonl(
    lines: Iterable[bytes | str], *, where: str = "manifest"
) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed JSON) for each non-blank line; a bad line raises with its
    number, e.g. `manifest line 7: invalid JSON (Expecting ',' delimiter)`."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        value, error = parse_json_line(line)
        if error is not None:
            raise InvalidInput(f"{where} line {lineno}", error)
        yield lineno, value


def check_items(
    raw_items: Any,
    kind: str,
    params: CaptionParams | GenerateParams,
    *,
    max_items: int,
    max_prompt_chars: int,
    max_n: int,
    resolve_file: Callable[[str, str], str] | None = None,
    storage_url: str | None = None,
) -> list[NewItem]:
    """Validate a whole inline item list up front: its size, every item, unique custom ids.

    `params` are the job's, from `parse_params(kind, ...)`; `resolve_file` and `storage_url`
    are passed to `caption_item`.
    """
    if not isinstance(raw_items, list):
        raise InvalidInput("items", "must be a list")
    if not raw_items:
        raise InvalidInput("items", "must not be empty")
    if len(raw_items) > max_items:
        raise TooLarge(
            "items",
            f"has {len(raw_items):,} items; at most {max_items:,} are accepted inline "
            "(upload a manifest and give it as source.manifest)",
        )
    items: list[NewItem] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_items):
        where = f"items[{i}]"
        if kind == JobKind.CAPTION and isinstance(params, CaptionParams):
            item = caption_item(
                raw,
                params,
                where=where,
                max_prompt_chars=max_prompt_chars,
                resolve_file=resolve_file,
                storage_url=storage_url,
            )
        elif kind != JobKind.CAPTION and isinstance(params, GenerateParams):
            item = generate_item(
                raw, params, where=where, max_prompt_chars=max_prompt_chars, max_n=max_n
            )
        else:
            raise TypeError(f"{type(params).__name__} are not the params of a {kind} job")
        if item.custom_id is not None and seen.setdefault(item.custom_id, i) != i:
            raise InvalidInput(
                f"{where}.custom_id",
                f"'{item.custom_id}' is already used by items[{seen[item.custom_id]}]",
            )
        items.append(item)
    return items


SOURCE_FIELDS = ("s3_prefix", "manifest")
SOURCE_KINDS = (*SOURCE_FIELDS, *datasets.FORMATS)


def check_source(
    raw: Any,
    kind: str,
    *,
    resolve_file: Callable[[str, str], str] | None = None,
    storage_url: str | None = None,
) -> dict[str, Any]:
    """Validate a job source and return what the job stores for the expand task.

    `{"s3_prefix": "s3://bucket/prefix/"}` (caption jobs: every image under it) or
    `{"manifest": "s3://...|https://...|file_..."}` (JSONL, one item per line). An uploaded
    file id is stored resolved, with the id kept: `{"manifest": "storage:<key>", "file_id": id}`.
    With `storage_url` (the service's storage) an `s3://` reference into it is refused.
    A dataset source (`csv`, `parquet`, `webdataset`) is checked by `janus_batch.datasets`.
    """
    if not isinstance(raw, dict):
        raise InvalidInput("source", 'must be an object like {"manifest": "s3://bucket/key"}')
    if any(name in raw for name in datasets.FORMATS) and not any(
        raw.get(name) is not None for name in SOURCE_FIELDS
    ):
        return _check_dataset(raw, kind, storage_url)
    for name in raw:
        if name not in SOURCE_FIELDS:
            raise InvalidInput(
                f"source.{name}", f"unknown field; use one of {', '.join(SOURCE_KINDS)}"
            )
    given = [name for name in SOURCE_FIELDS if raw.get(name) is not None]
    if len(given) != 1:
        raise InvalidInput("source", "give exactly one of s3_prefix or manifest")
    name = given[0]
    field = f"source.{name}"
    value = raw[name]
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(field, "must be a non-empty string")
    value = check_text(value.strip(), field)
    if name == "s3_prefix":
        if kind != JobKind.CAPTION:
            raise InvalidInput(
                field, "only caption jobs read an S3 prefix; give prompts as a manifest"
            )
        if not value.startswith("s3://") or not value[5:].split("/")[0]:
            raise InvalidInput(field, f"must look like s3://bucket/prefix/, got '{value}'")
        check_outside_storage(value, field, storage_url, listing=True)
        return {"s3_prefix": value}
    check_image_ref(value, field, what="manifest reference")
    check_outside_storage(value, field, storage_url)
    if value.startswith(FILE_ID_PREFIX):
        if resolve_file is None:
            raise InvalidInput(field, "file ids are not accepted here")
        return {"manifest": resolve_file(value, field), "file_id": value}
    return {"manifest": value}


def _check_dataset(raw: dict[str, Any], kind: str, storage_url: str | None) -> dict[str, Any]:
    def outside(ref: str, field: str, listing: bool) -> None:
        check_text(ref, field)
        check_outside_storage(ref, field, storage_url, listing=listing)

    try:
        return datasets.check_dataset_source(raw, kind, outside)
    except datasets.DatasetSourceError as exc:
        raise InvalidInput(exc.field, exc.message) from None
