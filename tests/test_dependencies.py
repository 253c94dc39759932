"""The dependency rules of ARCHITECTURE.md, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, top_level_only: bool, depth: int = 1) -> set[str]:
    """Modules imported by `path`, cut to their first `depth` dotted parts."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(".".join(alias.name.split(".")[:depth]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(".".join(node.module.split(".")[:depth]))
    return found


def _files(folder: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    files = sorted(
        path
        for path in (ROOT / folder).rglob("*.py")
        if not any(path.is_relative_to(ROOT / part) for part in exclude)
    )
    assert files, f"{folder}/ has no modules"
    return files


HEAVY = {"sqlalchemy", "alembic", "celery", "kombu", "redis", "torch", "transformers", "fastapi"}
CLIENT = "janus_batch/client"
OPS = "janus_batch/ops"
LIGHT_CORE = {"janus_batch.s3client", "janus_batch.formats"}
"""Core modules the client may use: they import nothing heavier than boto3 (checked below)."""

RULES = [
    # folder, forbidden top-level modules, check nested (function-level) imports too, excluded
    ("api", {"torch", "transformers", "janus", "worker", "tokenizers"}, True, ()),
    (
        "janus",
        {
            "celery",
            "sqlalchemy",
            "boto3",
            "botocore",
            "redis",
            "janus_batch",
            "api",
            "worker",
            "fastapi",
        },
        True,
        (),
    ),
    # the core: never the model runtime, the worker or the API (only the operator
    # commands of janus_batch/ops load the tiny-checkpoint factory, inside a function)
    ("janus_batch", {"torch", "transformers", "janus", "worker", "api"}, False, ()),
    ("janus_batch", {"torch", "transformers", "janus", "worker", "api"}, True, (OPS,)),
    # the client: `pip install janus-batch` has none of these
    (CLIENT, HEAVY | {"janus", "worker", "api", "pydantic_settings"}, True, ()),
]


@pytest.mark.parametrize(
    ("folder", "forbidden", "nested", "exclude"),
    RULES,
    ids=[f"{r[0]}{'-nested' if r[2] else ''}" for r in RULES],
)
def test_package_respects_its_dependency_rule(
    folder: str, forbidden: set[str], nested: bool, exclude: tuple[str, ...]
) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path, not nested) & forbidden)
        for path in _files(folder, exclude)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_core_never_imports_the_client_or_the_operator_commands() -> None:
    banned = {"janus_batch.client", "janus_batch.ops"}
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path, False, depth=2) & banned)
        for path in _files("janus_batch", exclude=(CLIENT, OPS))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_client_uses_only_the_client_and_light_core_modules() -> None:
    offenders = {}
    for path in _files(CLIENT):
        ours = {m for m in _imports(path, False, depth=3) if m.startswith("janus_batch.")}
        bad = {m for m in ours if not m.startswith("janus_batch.client")} - LIGHT_CORE
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}
    for module in LIGHT_CORE:
        path = ROOT / (module.replace(".", "/") + ".py")
        assert _imports(path, False) & (HEAVY | {"janus_batch"}) == set(), module
