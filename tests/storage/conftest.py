"""Fixtures for the storage tests: the same suite runs against a local folder and moto S3.

`moto_server` and `s3_env` come from tests/fixtures/s3.py, registered in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from janus_batch.storage import Storage, open_storage


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A storage on each backend: a temporary folder, then a fresh bucket on moto S3."""
    if request.param == "local":
        store = open_storage(str(tmp_path / "store"))
    else:
        env = request.getfixturevalue("s3_env")
        store = open_storage(env.storage_url, endpoint_url=env.endpoint_url, region=env.region)
    with store:
        yield store
