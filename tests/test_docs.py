"""README stays true: every setting documented, the CI script calls README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from janus_batch.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    rows = set(re.findall(r"^\| `(JANUS_BATCH_[A-Z0-9_]+)` \|", README, flags=re.MULTILINE))
    assert rows == {f"JANUS_BATCH_{name.upper()}" for name in Settings.model_fields}


def test_ci_runs_exactly_the_readme_test_command() -> None:
    setup = README.split("## Set-up: two commands", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in setup.splitlines() if line.strip()]
    commands = [c for c in commands if c and c != "bash"]
    assert commands == ["./scripts/demo.sh", "./scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "./scripts/test.sh" in [line.strip() for line in ci]


def test_readme_has_no_unfilled_placeholders() -> None:
    assert not re.search(r"\b[A-Z]+_(SECTION|TABLE|OUTPUT)\b", README)


def test_readmes_worker_commands_log_each_task_and_compose_names_its_plugin() -> None:
    """A worker started as README says logs a line per task (without `--loglevel INFO`
    Celery's default logs none); `docker compose` is said to need the Compose plugin."""
    text = " ".join(README.split())  # commands wrapped over lines are read whole
    commands = re.findall(r"celery -A worker\.app worker .*?@%h", text)
    assert len(commands) >= 3
    assert all("--loglevel INFO" in command for command in commands), commands
    assert "docker-compose-plugin" in README and "`docker compose version`" in text
