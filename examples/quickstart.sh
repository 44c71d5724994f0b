#!/usr/bin/env bash
# One command, fresh machine: set up the environment (as the test command does), then run the
# whole ADEPT pipeline on the bundled demo corpora. Usage: bash examples/quickstart.sh [OUT_DIR]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$repo/scripts/setup_env.sh" test)"
exec "$python" "$repo/examples/quickstart.py" "$@"
