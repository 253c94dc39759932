"""One writer of job and item state (ARCHITECTURE.md): only `janus_batch/lifecycle.py` issues
INSERT, UPDATE or DELETE on the `jobs` and `items` tables, or creates their ORM rows."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "worker", "janus_batch", "janus")
WRITER = ROOT / "janus_batch" / "lifecycle.py"
TABLES = {"Job", "Item"}
RAW_SQL = re.compile(r"\b(UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+(jobs|items)\b", re.IGNORECASE)


def _writes(tree: ast.AST) -> list[str]:
    """What a module does to jobs/items: update(Job), insert(Item), delete(...), Job(...)
    (an ORM row to add), session.delete(...), and raw SQL strings that write them."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            attr = node.func.attr if isinstance(node.func, ast.Attribute) else None
            args = {a.id for a in node.args if isinstance(a, ast.Name)}
            if (name or attr) in {"update", "insert", "delete"} and args & TABLES:
                found.append(f"line {node.lineno}: {name or attr}({', '.join(sorted(args))})")
            elif name in TABLES:
                found.append(f"line {node.lineno}: {name}(...) row")
            elif attr == "delete" and _is_session(node.func):
                found.append(f"line {node.lineno}: session.delete(...)")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and RAW_SQL.search(node.value)
        ):
            found.append(f"line {node.lineno}: raw SQL {node.value[:40]!r}")
    return found


def _is_session(func: ast.expr) -> bool:
    target = func.value if isinstance(func, ast.Attribute) else None
    return isinstance(target, ast.Name) and target.id.endswith("session")


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if p != WRITER)


def test_only_the_lifecycle_module_writes_jobs_and_items() -> None:
    offenders = {}
    for path in _modules():
        writes = _writes(ast.parse(path.read_text(), str(path)))
        if writes:
            offenders[str(path.relative_to(ROOT))] = writes
    assert offenders == {}


def test_the_check_sees_every_kind_of_write() -> None:
    """The detector itself: each way of writing is caught (so the test above can fail)."""
    source = """
session.execute(update(Job).where(Job.id == 1).values(status="x"))
session.execute(insert(Item), rows)
session.execute(delete(Item).where(Item.id == 1))
session.add(Job(id="j"))
session.delete(job)
session.execute(text("update items set status = 'x'"))
"""
    assert len(_writes(ast.parse(source))) == 6
    assert _writes(ast.parse("session.execute(update(ApiKey).values(x=1))")) == []
    assert _writes(ast.parse("storage.delete('jobs/x/results.jsonl')")) == []
    assert _writes(WRITER_TREE) != []  # the writer itself does write


WRITER_TREE = ast.parse(WRITER.read_text())
