#!/usr/bin/env bash
# The project's one test command: set up the environment if needed, then run the whole suite.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$repo/scripts/setup_env.sh" test)"
cd "$repo"
exec "$python" -m pytest tests -q "$@"
