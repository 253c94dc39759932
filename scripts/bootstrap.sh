#!/usr/bin/env bash
# Create .venv (if missing) and install torch + janus-batch with its dev extras into it.
# Idempotent: a second run only checks. Torch is installed first and on its own, so the
# project's `torch>=2.6` range is satisfied by it and nothing more is downloaded.
# JANUS_BATCH_TORCH overrides the torch requirement, flags included, e.g.
#   JANUS_BATCH_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# (PyPI's Linux wheel of torch is the CUDA build, several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_REQ=${JANUS_BATCH_TORCH:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "bootstrap: installing $TORCH_REQ"
  # shellcheck disable=SC2086 # word splitting on purpose: the variable may carry pip flags
  "$VENV/bin/python" -m pip install -q $TORCH_REQ
fi
stamp="$VENV/.janus-batch-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing janus-batch[dev]"
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
