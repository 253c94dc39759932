"""The API image has no GPU libraries: importing the app pulls in no torch, transformers,
`janus` or `worker`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import sys
import api.main
app = api.main.create_app()
banned = ("torch", "transformers", "janus", "worker")
found = sorted(m for m in sys.modules if m.split(".")[0] in banned)
assert not found, found
print("clean")
"""


def test_api_imports_no_model_runtime():
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"
