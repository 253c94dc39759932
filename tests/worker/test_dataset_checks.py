"""Dataset keys and metadata held to the rules of inline items at expansion (a bad one fails its
item alone, never the INSERT of its page or the manifests), sidecar names that are always
valid storage keys, and the terminal paths of expand and finalize: an error that a retry would
meet again ends the job `failed` with the reason instead of a loop."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from janus_batch.models import utcnow
from janus_batch.states import ItemStatus, JobKind, JobStatus
from janus_batch.storage import validate_key
from tests.fixtures.datasets import csv_text, jpeg
from tests.worker.helpers import drain, get_items, get_job, read_jsonl
from tests.worker.test_datasets import dataset_job, put_shards
from worker import dataset_items, parquet, sidecars, tables
from worker.datasets import DataFile, Opener
from worker.expand import expand_source
from worker.fetch import FetchError
from worker.sources import SourceError
from worker.sweeper import sweep


def raw_shard(members: list[tuple[bytes, bytes]]) -> bytes:
    """A tar of (raw member name, data), names written as bytes (not necessarily UTF-8)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:  # fmt: skip
        for name, data in members:
            info = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def strict_jsonl(data: bytes) -> list[dict[str, Any]]:
    """JSON lines as any consumer reads them: NaN or Infinity tokens are not JSON."""

    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in data.decode().splitlines()]


def test_bad_keys_and_metadata_fail_their_sample_alone(make_ctx: Any, s3_env: Any) -> None:
    ctx = make_ctx()
    shard = raw_shard([
        (b"000.jpg", jpeg(1)), (b"000.json", b'{"caption": "ok", "score": NaN, "w": Infinity}'),
        (b"a\xff.jpg", jpeg(2)),                                     # key not UTF-8
        (b"002.jpg", jpeg(3)), (b"002.json", b'{"caption": "\\ud800"}'),  # lone surrogate
        (b"003.jpg", jpeg(4)), (b"003.txt", b"nul \x00 inside"),
        (b"004.jpg", jpeg(5)), (b"004.json", b'{"\\udfff": 1}'),     # a field name
    ])  # fmt: skip
    put_shards(s3_env, {"00000.tar": shard})
    ref = f"s3://{s3_env.bucket}/shards/00000.tar"
    job_id = dataset_job(ctx, JobKind.CAPTION, {"webdataset": ref}, prompt="Describe.")
    assert expand_source(ctx, job_id) == 5  # the page INSERT did not fail

    rows = {r.idx: r for r in get_items(ctx, job_id)}
    assert rows[0].status == ItemStatus.PENDING
    assert rows[0].input["meta"] == {"caption": "ok", "score": None, "w": None}
    errors = {i: rows[i].error for i in (1, 2, 3, 4)}
    assert errors == {
        1: f"{ref} sample a\\xff: key: is not valid Unicode (lone surrogate)",
        2: f"{ref} sample 002: meta.caption: is not valid Unicode (lone surrogate)",
        3: f"{ref} sample 003: meta.txt: must not contain NUL characters",
        4: f"{ref} sample 004: meta: a field name is not valid Unicode (lone surrogate)",
    }
    assert rows[1].input["key"] == "a\\xff" and rows[1].custom_id is None
    assert rows[2].custom_id == "002" and rows[2].input["next"] > 0  # resumable after it
    assert all(rows[i].status == ItemStatus.FAILED for i in errors)

    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 1, 4)
    prefix = f"jobs/{job_id}"
    results = strict_jsonl(ctx.storage.get_bytes(f"{prefix}/results.jsonl"))
    assert results[0]["input"]["meta"]["score"] is None
    failed = strict_jsonl(ctx.storage.get_bytes(f"{prefix}/errors.jsonl"))
    assert [line["error"] for line in failed] == [errors[i] for i in (1, 2, 3, 4)]
    sidecar = strict_jsonl(ctx.storage.get_bytes(sidecars.sidecar_key(prefix, ref)))
    assert [line["__key__"] for line in sidecar] == ["000", "a\\xff", "002", "003", "004"]


def test_csv_and_parquet_values_are_checked_like_inline_items(ctx: Any, s3_env: Any) -> None:
    client = s3_env.client()
    rows = [{"id": "k1", "prompt": "a fox"}, {"id": "k\x002", "prompt": "a cat"}]
    client.put_object(Bucket=s3_env.bucket, Key="p.csv", Body=csv_text(rows))
    table = pa.table({"prompt": ["a dog", "a cow"], "score": [float("nan"), 0.5],
                      "tags": [[1.0, float("inf")], []]})  # fmt: skip
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    client.put_object(Bucket=s3_env.bucket, Key="p.parquet", Body=buffer.getvalue())

    source = {"csv": f"s3://{s3_env.bucket}/p.csv", "key_column": "id", "prompt_column": "prompt"}
    csv_job = dataset_job(ctx, JobKind.GENERATE, source)
    assert expand_source(ctx, csv_job) == 2
    good, bad = get_items(ctx, csv_job)
    assert good.custom_id == "k1" and good.status == ItemStatus.PENDING
    where = f"s3://{s3_env.bucket}/p.csv row 2"
    assert bad.error == f"{where}: key: must not contain NUL characters"
    assert bad.input == {"file": f"s3://{s3_env.bucket}/p.csv", "row": 2, "key": "k\\x002"}

    source = {"parquet": f"s3://{s3_env.bucket}/p.parquet", "prompt_column": "prompt"}
    pq_job = dataset_job(ctx, JobKind.GENERATE, source)
    assert expand_source(ctx, pq_job) == 2
    first, second = get_items(ctx, pq_job)
    assert first.status == second.status == ItemStatus.PENDING  # NaN is pandas' missing value
    assert first.input["meta"] == {"prompt": "a dog", "score": None, "tags": [1.0, None]}
    assert second.input["meta"]["score"] == 0.5


def test_sidecar_names_are_always_valid_storage_keys() -> None:
    prefix = "jobs/job_0123456789abcdef01234567"
    assert sidecars.sidecar_key(prefix, "s3://b/shards/0001.tar") == (
        f"{prefix}/sidecars/b/shards/0001.captions.jsonl"  # readable where it can be
    )
    odd = [
        "s3://b/shards/" + "x" * 250 + ".tar",
        "s3://b/dir\\sub/0001.tar",
        "s3://b//0001.tar",
        "s3://b/./a/../0001.tar",
        "s3://b/" + "d/" * 500 + "1.tar",
    ]
    keys = [sidecars.sidecar_key(prefix, shard) for shard in odd]
    assert all(validate_key(key) for key in keys)
    assert len(set(keys)) == len(odd)
    assert keys[1].startswith(f"{prefix}/sidecars/_/") and keys[1].endswith("-0001.captions.jsonl")


def test_a_shard_whose_name_is_no_storage_key_gets_its_sidecar(make_ctx: Any, s3_env: Any) -> None:
    ctx = make_ctx()
    shard = raw_shard([(b"k1.jpg", jpeg(1))])
    names = {"x" * 250 + ".tar": shard, "dir\\sub/0001.tar": shard}
    put_shards(s3_env, names)
    refs = [f"s3://{s3_env.bucket}/shards/{name}" for name in names]
    job_id = dataset_job(ctx, JobKind.CAPTION, {"webdataset": refs}, prompt="Describe.")
    expand_source(ctx, job_id)
    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded) == (JobStatus.SUCCEEDED, 2)  # not stuck in finalizing
    index = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/sidecars/index.jsonl"))
    assert [line["shard"] for line in index] == refs
    for line in index:
        assert "/sidecars/_/" in line["sidecar"]
        (entry,) = read_jsonl(ctx.storage.get_bytes(line["sidecar"]))
        assert entry["__key__"] == "k1" and entry["status"] == "succeeded"


def no_image_shard_job(ctx: Any, s3_env: Any) -> str:
    """A WebDataset job whose one sample has no image: it fails at expansion, no model runs."""
    put_shards(s3_env, {"0.tar": raw_shard([(b"k1.json", b'{"caption": "c"}')])})
    ref = f"s3://{s3_env.bucket}/shards/0.tar"
    return dataset_job(ctx, JobKind.CAPTION, {"webdataset": ref}, prompt="Describe.")


def test_a_finalize_error_that_would_recur_ends_the_job_failed(
    ctx: Any, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = no_image_shard_job(ctx, s3_env)
    expand_source(ctx, job_id)
    # what every sidecar of a long shard name did: a key the storage refuses (not transient)
    monkeypatch.setattr(sidecars, "sidecar_key", lambda prefix, shard: f"{prefix}/{'y' * 300}")
    drain(ctx)
    job = get_job(ctx, job_id)
    assert job.status == JobStatus.FAILED
    assert job.error.startswith("all 1 items failed (see errors.jsonl); finalize failed: ")
    assert "KeyTooLongError" in job.error
    counts = sweep(ctx, utcnow() + timedelta(hours=1))
    assert counts["refinalized"] == 0  # nothing left for the sweeper to send again


def test_an_expansion_error_that_would_recur_ends_the_job(
    ctx: Any, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_shards(s3_env, {"0.tar": raw_shard([(b"ok.jpg", jpeg(1)), (b"a\xff.jpg", jpeg(2))])})
    ref = f"s3://{s3_env.bucket}/shards/0.tar"
    job_id = dataset_job(ctx, JobKind.CAPTION, {"webdataset": ref}, prompt="Describe.")
    monkeypatch.setattr(
        dataset_items, "storable", lambda item, _limit: item
    )  # the check taken away
    assert expand_source(ctx, job_id) == 0  # the page INSERT fails on the key...
    job = get_job(ctx, job_id)
    assert job.expanded  # ...and ends the expansion: no endless resume
    assert job.error.startswith(f"cannot expand webdataset source {ref}: UnicodeEncodeError: ")
    drain(ctx)
    assert get_job(ctx, job_id).status == JobStatus.FAILED
    assert sweep(ctx, utcnow() + timedelta(hours=1))["reexpanded"] == 0


def test_parquet_columns_holding_bytes_at_any_depth_are_never_read_as_metadata() -> None:
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([
        ("prompt", pa.string()), ("image", image), ("masks", pa.list_(pa.binary())),
        ("raw", pa.large_binary()), ("boxes", pa.list_(pa.struct([("x", pa.float32())]))),
    ])  # fmt: skip
    assert parquet.kept_columns(schema, None) == ["prompt", "boxes"]  # a generate job's
    assert parquet.kept_columns(schema, "image") == ["prompt", "boxes"]


def put(s3_env: Any, key: str, data: bytes) -> str:
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=data)
    return f"s3://{s3_env.bucket}/{key}"


def test_dataset_rows_and_samples_are_bounded(
    make_ctx: Any, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(max_row_group_bytes=str(2 << 20))
    big = "x" * (3 << 20)  # a 3 MiB cell: its row group is over the 2 MiB limit, unread
    table = pa.table({"prompt": ["a", "b", "c", "d"], "note": ["n", "y" * 1_100_000, "z", big]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=2)
    ref = put(s3_env, "big.parquet", buffer.getvalue())
    job_id = dataset_job(ctx, JobKind.GENERATE, {"parquet": ref, "prompt_column": "prompt"})
    assert expand_source(ctx, job_id) == 3
    first, second, rest = get_items(ctx, job_id)
    assert first.status == ItemStatus.PENDING
    assert second.error == (  # a row over the line limit as JSON: fails alone
        f"{ref} row 2: its input is 1,100,xxx characters as JSON; the limit is 1,048,576 "
        "(JANUS_BATCH_MAX_MANIFEST_LINE_BYTES)".replace("1,100,xxx", f"{second_size(second):,}")
    )
    assert rest.error.startswith(f"parquet file {ref} is not read after row 2: row group 1 holds ")
    assert rest.error.endswith("; the limit is 2,097,152 (JANUS_BATCH_MAX_ROW_GROUP_BYTES)")

    members = [(b"many.jpg", jpeg(1))] + [(f"many.m{i}".encode(), b"1") for i in range(300)]
    members += [(b"fat.jpg", jpeg(2))] + [(f"fat.t{i}".encode(), b"t" * 400_000) for i in range(3)]
    members += [(b"ok.jpg", jpeg(3)), (b"ok.txt", b"fine")]
    shard = put(s3_env, "m.tar", raw_shard(members))
    job_id = dataset_job(ctx, JobKind.CAPTION, {"webdataset": shard}, prompt="Describe.")
    assert expand_source(ctx, job_id) == 3
    many, fat, ok = get_items(ctx, job_id)
    assert many.error == f"{shard} sample many: it has more than 256 members"
    assert fat.error == (f"{shard} sample fat: its metadata members are 1,200,000 bytes; the "
                         "limit is 1,048,576 (JANUS_BATCH_MAX_MANIFEST_LINE_BYTES)")  # fmt: skip
    assert ok.status == ItemStatus.PENDING and ok.input["meta"] == {"txt": "fine"}

    monkeypatch.setattr(parquet, "MAX_FOOTER_BYTES", 64)
    job_id = dataset_job(ctx, JobKind.GENERATE, {"parquet": ref, "prompt_column": "prompt"})
    expand_source(ctx, job_id)
    (only,) = get_items(ctx, job_id)
    assert only.error.startswith(f"{ref}: its parquet footer is ")
    assert only.error.endswith(" bytes; the limit is 64")


def second_size(item: Any) -> int:
    """The JSON size the refused row had: its prompt, n, seed, ... and its 1.1 MB note."""
    return int(item.error.split("its input is ")[1].split(" ")[0].replace(",", ""))


def test_a_parquet_image_column_over_the_row_group_limit_is_not_read(
    make_ctx: Any, s3_env: Any
) -> None:
    ctx = make_ctx(max_row_group_bytes=str(1 << 20))
    images = [jpeg(1), bytes(1_200_000)]  # the second row group's column is over 1 MiB
    table = pa.table({"image": pa.array(images, pa.binary()), "k": ["a", "b"]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=1)
    ref = put(s3_env, "img.parquet", buffer.getvalue())
    data_file = DataFile(ref, ref)
    opener = Opener(ctx.settings, ctx.storage)
    refs = [(data_file, 0, 0, "image", f"{ref}#row=1"), (data_file, 1, 0, "image", f"{ref}#row=2")]
    try:
        good, bad = parquet.read_cells(opener, refs, 10_000_000, ctx.settings.max_row_group_bytes)
    finally:
        opener.close()
    assert good == jpeg(1)
    assert isinstance(bad, FetchError) and bad.permanent
    assert str(bad).startswith(f"cannot read {ref} row group 1: row group 1 holds ")


def test_a_csv_line_over_the_limit_is_never_held_and_fails_alone() -> None:
    text = b"key,prompt\na,one\n" + b"," * 3_000_000 + b"\nb,two\nc," + b"x" * 2_000_000
    rows = list(tables.csv_rows(io.BytesIO(text), "s3://b/t.csv", max_row_bytes=1 << 20))
    assert [row for row, _ in rows] == [1, 2, 3, 4]
    assert rows[0][1] == {"key": "a", "prompt": "one"} and rows[2][1] == {
        "key": "b",
        "prompt": "two",
    }
    for _, bad in (rows[1], rows[3]):
        assert isinstance(bad, tables.BadRow)
        assert bad.message.endswith(
            "; the limit is 1,048,576 (JANUS_BATCH_MAX_MANIFEST_LINE_BYTES)"
        )
    assert rows[1][1].message.startswith("is a line of 3,000,001 characters")
    with pytest.raises(SourceError, match="cannot read its header row: is a line of"):
        list(tables.csv_rows(io.BytesIO(b"k" * 2_000_000), "h.csv", max_row_bytes=1 << 20))


def test_the_fast_check_and_the_walk_agree_on_every_value() -> None:
    """`storable` checks the usual row in one json.dumps; anything that looks wrong there is
    walked, so the verdict is the walk's: a literal backslash-u0000 text is stored as it is."""
    from janus_batch.items import NewItem

    fine = {"image": "https://h/a.jpg", "meta": {"alt": "a sign", "n": [1, 2.5]}}
    cases = {  # name: (input, what the fast check says, the walk's problem)
        "fine": (fine, True, None),
        "literal": ({**fine, "meta": {"alt": "a \\u0000 sign"}}, False, None),
        "nul": ({**fine, "meta": {"alt": "a\x00b"}}, False, "meta.alt: must not contain NUL"),
        "surrogate": ({**fine, "key": "k\ud800"}, False, "key: is not valid Unicode"),
        "nan": ({**fine, "meta": {"w": float("nan")}}, False, "meta.w: nan is not a JSON"),
        "field": ({**fine, "meta": {"a\x00": 1}}, False, "a field name must not contain NUL"),
    }
    for name, (value, fast, problem) in cases.items():
        item = NewItem(value, custom_id="c")
        text = dataset_items._fast_text(item)
        assert (text is not None) is fast, name
        if fast:  # the compact JSON the size limit is measured on
            assert json.loads(text) == value, name
        kept = dataset_items.storable(item)
        if problem is None:
            assert kept is item, name
        else:
            assert kept.error is not None and problem in kept.error, (name, kept.error)
    for custom_id, problem in (
        ("c\x00", "custom_id: must not contain NUL"),
        ("c\udc80", "custom_id"),
    ):
        item = NewItem(fine, custom_id=custom_id)  # custom_id is checked outside the JSON
        assert dataset_items._fast_text(item) is None
        kept = dataset_items.storable(item)
        assert kept.error is not None and problem in kept.error, kept.error
