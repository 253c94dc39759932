"""Dependency rule: janus/ imports only torch, transformers, tokenizers, numpy, pillow, stdlib."""

import ast
import pathlib
import subprocess
import sys

import janus

ALLOWED = {
    "torch", "transformers", "tokenizers", "numpy", "PIL",
    # the checkpoint converter (janus/convert.py, janus/original.py): transformers' own deps
    "safetensors", "huggingface_hub", "filelock",
}  # fmt: skip
FORBIDDEN = ("celery", "sqlalchemy", "boto3", "redis", "janus_batch", "api", "worker")


def test_janus_source_imports_only_allowed_packages():
    package = pathlib.Path(janus.__file__).parent
    stdlib = set(sys.stdlib_module_names)
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in ALLOWED or top in stdlib, f"{source.name} imports {name}"


def test_importing_janus_pulls_in_no_service_libraries():
    code = f"import sys, janus; print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=pathlib.Path(janus.__file__).parent.parent,
    )
    assert result.stdout.strip() == ""
