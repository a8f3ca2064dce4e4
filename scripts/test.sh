#!/usr/bin/env bash
# Sets up the environment if needed, then runs the test suite (extra arguments go to pytest).
# Fast by default; `scripts/test.sh -m slow` runs the slow tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export WANDB_MODE=offline
exec .venv/bin/python -m pytest "$@"
