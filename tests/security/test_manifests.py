"""Manifest sources (worker.sources.read_lines): an http(s) manifest is read under the egress
policy, and a line over JANUS_BATCH_MAX_MANIFEST_LINE_BYTES is never held whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from janus_batch.settings import Settings
from janus_batch.storage import LocalStorage
from tests.security.listeners import http_listener
from worker.sources import HEAD_BYTES, LongLine, SourceError, read_lines, split_lines

MANIFEST = b'{"prompt": "a fox"}\n{"prompt": "a lighthouse"}\n'


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


def test_a_manifest_on_a_loopback_host_is_refused(storage: LocalStorage) -> None:
    with http_listener({"/internal.txt": (200, {}, b"redis-password=hunter2\n")}) as internal:
        with http_listener() as allowed:
            allowed.routes["/prompts.jsonl"] = (
                302,
                {"Location": internal.url("/internal.txt")},
                b"",
            )
            settings = Settings(egress_allow_http=True, egress_allow=allowed.host)
            for url in (internal.url("/internal.txt"), allowed.url("/prompts.jsonl")):
                with pytest.raises(SourceError) as info:
                    list(read_lines(settings, storage, url))
                assert str(info.value) == f"cannot read {url}: refused by the egress policy"
            strict = Settings()  # https only, public hosts only
            with pytest.raises(SourceError, match="refused by the egress policy"):
                list(read_lines(strict, storage, internal.url("/internal.txt")))
        assert sum(internal.hits.values()) == 0


def test_an_allowed_manifest_host_is_read(storage: LocalStorage) -> None:
    with http_listener({"/prompts.jsonl": (200, {}, MANIFEST)}) as web:
        settings = Settings(egress_allow_http=True, egress_allow=web.host)
        lines = list(read_lines(settings, storage, web.url("/prompts.jsonl")))
        assert lines == [b'{"prompt": "a fox"}', b'{"prompt": "a lighthouse"}']


def test_long_lines_come_as_their_start_and_length(storage: LocalStorage) -> None:
    long = b'{"prompt": "' + b"x" * 5000 + b'"}'
    storage.put_bytes("inputs/m.jsonl", MANIFEST + long + b"\r\n" + MANIFEST)
    with http_listener({"/m.jsonl": (200, {}, MANIFEST + long + b"\n" + MANIFEST)}) as web:
        settings = Settings(
            egress_allow_http=True, egress_allow=web.host, max_manifest_line_bytes=4096
        )
        for uri in ("storage:inputs/m.jsonl", web.url("/m.jsonl")):
            lines = list(read_lines(settings, storage, uri))
            assert len(lines) == 5
            assert lines[2] == LongLine(long[:HEAD_BYTES], len(long))
            assert lines[:2] == lines[3:] == [b'{"prompt": "a fox"}', b'{"prompt": "a lighthouse"}']


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_split_lines_caps_a_line_whatever_the_chunking(chunk: int) -> None:
    data = b"short\n" + b"y" * 300 + b"\r\nafter\n" + b"z" * 200
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    assert list(split_lines(pieces, max_line=100)) == [
        b"short",
        LongLine(b"y" * 300, 300),
        b"after",
        LongLine(b"z" * 200, 200),
    ]
    assert list(split_lines(pieces)) == [b"short", b"y" * 300, b"after", b"z" * 200]
