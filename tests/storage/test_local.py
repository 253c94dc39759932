"""Local-folder backend specifics: URLs, atomic writes, the folder lifecycle."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from janus_batch.storage import LocalStorage, StorageError, open_storage
from janus_batch.storage.local import TMP_PREFIX


def test_plain_path_and_file_url_name_the_same_folder(tmp_path: Path) -> None:
    plain = open_storage(str(tmp_path / "store"))
    url = open_storage((tmp_path / "store").as_uri())
    assert isinstance(plain, LocalStorage) and isinstance(url, LocalStorage)
    assert plain.url == url.url == str((tmp_path / "store").resolve())
    plain.put_bytes("a/b.txt", b"x")
    assert url.get_bytes("a/b.txt") == b"x"
    assert url.uri("a/b.txt") == (tmp_path / "store" / "a" / "b.txt").as_uri()


def test_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert open_storage("rel/results").url == str(tmp_path.resolve() / "rel" / "results")


def test_writes_are_atomic_and_readable_by_others(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.put_bytes("deep/folder/file.bin", b"data")
    path = tmp_path / "deep" / "folder" / "file.bin"
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["file.bin"]  # no temp file left behind


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    with pytest.raises(StorageError, match="cannot write"):
        store.put_file("x.bin", tmp_path / "does-not-exist")
    assert list(store.iter_keys()) == []
    assert os.listdir(tmp_path) == []


def test_in_progress_writes_are_not_listed(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.put_bytes("a.txt", b"x")
    (tmp_path / f"{TMP_PREFIX}abc").write_bytes(b"partial")
    assert list(store.iter_keys()) == ["a.txt"]


def test_key_under_a_file_is_a_storage_error(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.put_bytes("a", b"x")
    with pytest.raises(StorageError, match="cannot write"):
        store.put_bytes("a/b", b"y")
    assert not store.exists("a/b")


def test_ping_creates_the_folder(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "new" / "folder")
    store.ping()
    assert (tmp_path / "new" / "folder").is_dir()


def test_ping_fails_readably_when_folder_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="is not usable"):
        LocalStorage(tmp_path / "file").ping()


def test_iter_keys_of_missing_folder_is_empty(tmp_path: Path) -> None:
    assert list(LocalStorage(tmp_path / "missing").iter_keys()) == []
