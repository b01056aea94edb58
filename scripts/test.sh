#!/usr/bin/env bash
# The test suite: unit tests, then integration tests on a real Docker engine and a real Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --base-images
exec .venv/bin/python -m pytest "$@"
