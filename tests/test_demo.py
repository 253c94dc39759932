"""The README's main job (`janus-batch demo`) completes offline on the embedded defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.services import free_port


def test_demo_runs_both_jobs_with_bundled_redis_and_tiny_fallback(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {
        **os.environ,
        "JANUS_BATCH_DATA_DIR": str(data),
        # Nothing listens here, so the demo must start its bundled Redis.
        "JANUS_BATCH_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "HF_HUB_OFFLINE": "1",
        "JANUS_BATCH_TORCH_THREADS": "1",
        "COLUMNS": "200",
    }
    for key in ("JANUS_BATCH_DATABASE_URL", "JANUS_BATCH_STORAGE_URL", "JANUS_BATCH_MODEL"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "janus_batch.client.cli.main", "demo", "--timeout", "400"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "started the bundled one" in out
    assert "TINY RANDOM checkpoint" in out
    assert (data / "janus-batch.db").is_file()

    manifests = sorted((data / "results" / "jobs").glob("*/results.jsonl"))
    assert len(manifests) == 2
    rows = [json.loads(line) for m in manifests for line in m.read_text().splitlines()]
    captions = [r for r in rows if "caption" in r]
    generated = [r for r in rows if "images" in r]
    assert len(captions) == 4 and all(isinstance(r["caption"], str) for r in captions)
    assert len(generated) == 3
    for row in generated:
        assert len(row["images"]) == 2
        for image in row["images"]:
            path = data / "results" / image["key"]
            with Image.open(path) as img:
                assert img.size == (384, 384)
            assert str(path) in out.replace("\n", "")
    assert "done" in out
