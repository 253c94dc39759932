"""The code stays type-checked (mypy), lint-free and formatted (ruff), with the settings in
pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MYPY_TIMEOUT = 600


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(MYPY_TIMEOUT + 60)
def test_mypy_reports_no_errors() -> None:
    done = _run("mypy", "api", "worker", "janus", "janus_batch", timeout=MYPY_TIMEOUT)
    assert done.returncode == 0, f"mypy failed:\n{done.stdout}{done.stderr}"


def test_ruff_reports_no_findings() -> None:
    lint = _run("ruff", "check", "--no-cache", ".", timeout=120)
    assert lint.returncode == 0, f"ruff check failed:\n{lint.stdout}{lint.stderr}"
    fmt = _run("ruff", "format", "--check", "--no-cache", ".", timeout=120)
    assert fmt.returncode == 0, f"ruff format --check failed:\n{fmt.stdout}{fmt.stderr}"
