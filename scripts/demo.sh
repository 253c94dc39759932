#!/usr/bin/env bash
# The main job: set up .venv if needed, then run a caption job and a generate job through
# the API, Redis, a Celery worker and local storage on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/janus-batch demo "$@"
