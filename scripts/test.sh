#!/usr/bin/env bash
# The test command: set up .venv if needed, then run the whole suite (one torch thread per
# process) on JB_TEST_WORKERS pytest-xdist processes (default 2: this project's machines have
# two cores; every test has its own database, Redis key space and folders).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q -n "${JB_TEST_WORKERS:-2}" "$@"
