"""The dependency rules of ARCHITECTURE.md, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


RULES = [
    # package, forbidden top-level modules, check nested (function-level) imports too
    ("api", {"torch", "transformers", "janus", "worker", "tokenizers"}, True),
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
    ),
    ("janus_batch", {"torch", "transformers", "janus", "worker", "api"}, False),
]


@pytest.mark.parametrize(("package", "forbidden", "nested"), RULES, ids=[r[0] for r in RULES])
def test_package_respects_its_dependency_rule(
    package: str, forbidden: set[str], nested: bool
) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path, not nested) & forbidden)
        for path in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}
