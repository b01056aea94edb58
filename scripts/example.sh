#!/usr/bin/env bash
# The main job: the example matrix (Python 3.9/3.11/3.13 x two numpy versions, 2 shards per cell), end to end,
# on this machine (no cluster: no Ray to start). Base images are bootstrapped offline by matrix-run itself when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/matrix-run run matrices/example.yaml "$@"
