"""Choosing a backend from a URL or from the settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from janus_batch.settings import Settings
from janus_batch.storage import LocalStorage, S3Storage, open_storage, storage_from_settings


def test_open_storage_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert isinstance(open_storage(tmp_path.as_uri()), LocalStorage)
    s3 = open_storage("s3://bucket/a/b/", endpoint_url="http://127.0.0.1:1", region="eu-west-1")
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.url) == ("bucket", "a/b", "s3://bucket/a/b")
    assert s3.uri("k") == "s3://bucket/a/b/k"


@pytest.mark.parametrize("url", ["gs://bucket/x", "http://host/x", "s3://", "s3:///key"])
def test_open_storage_rejects_unknown_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_storage(url)


def test_storage_from_settings_s3() -> None:
    settings = Settings(
        storage_url="s3://results/jobs",
        s3_endpoint_url="http://127.0.0.1:1",
        s3_region="eu-west-1",
        fetch_concurrency=4,
        upload_concurrency=24,
    )
    store = storage_from_settings(settings)
    assert isinstance(store, S3Storage)
    assert store.url == "s3://results/jobs"
    assert store.endpoint_url == "http://127.0.0.1:1"
    config = store._client.meta.config
    assert config.max_pool_connections == 4 + 2 * 24  # fetches, and encodes overlapping uploads
    assert store._client.meta.region_name == "eu-west-1"


def test_storage_from_settings_defaults_to_data_dir(tmp_path: Path) -> None:
    store = storage_from_settings(Settings(data_dir=tmp_path, storage_url=None))
    assert isinstance(store, LocalStorage)
    assert store.url == str((tmp_path / "results").resolve())
