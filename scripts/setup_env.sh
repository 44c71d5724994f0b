#!/usr/bin/env bash
# Create (once) and update the project's virtual environment, then print its python path.
#
# CPU machines get the CPU build of torch (torch==2.13.0) before anything else, so that no
# multi-GB CUDA build is pulled in; GPU machines keep the torch they already have when
# ADEPT_VENV points at an existing environment. Re-running is cheap: installation is skipped
# while pyproject.toml is unchanged.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ADEPT_VENV:-$repo/.venv}"
extras="${1:-test}"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating virtual environment $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
fi
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "installing torch==2.13.0 (CPU build)" >&2
    "$venv/bin/python" -m pip install -q torch==2.13.0 >&2
fi
stamp="$venv/.megatron-adept-$extras-$(sha1sum "$repo/pyproject.toml" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "installing megatron-adept[$extras] and its dependencies" >&2
    "$venv/bin/python" -m pip install -q -e "$repo[$extras]" >&2
    touch "$stamp"
fi
echo "$venv/bin/python"
