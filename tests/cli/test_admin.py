"""Operator commands: `db upgrade` migrates a fresh database; `model make-tiny` writes a
checkpoint the engine loads."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect

from janus_batch.db import dispose_engines, get_engine
from janus_batch.migrate import current_revision
from tests.cli.conftest import invoke


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    run = invoke({"JANUS_BATCH_DATABASE_URL": url}, "db", "upgrade")
    assert run.exit_code == 0, run.stderr
    assert "database at revision 0007" in run.stdout
    assert current_revision(url) == "0007"
    assert {"jobs", "items", "api_keys", "files"} <= set(inspect(get_engine(url)).get_table_names())
    dispose_engines()


def test_model_make_tiny_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    from janus import GenerateRequest, JanusEngine

    run = invoke({}, "model", "make-tiny", tmp_path / "tiny", "--image-size", "64")
    assert run.exit_code == 0, run.stderr
    assert "64x64" in run.stdout
    engine = JanusEngine.load(str(tmp_path / "tiny"), device="cpu", dtype="float32")
    [result] = engine.generate([GenerateRequest("a fox", n=1, seed=3)])
    assert result.ok and result.images[0].image.size == (64, 64)
