#!/usr/bin/env bash
# Prove the GPU path on this machine: tokenizer -> random Llama-style HF model -> convert ->
# bf16 probe vs fp32 CPU probe -> expand -> ADEPT and PT-full training (bf16, distributed
# optimizer, NCCL, every visible GPU) -> HF export -> logits vs transformers; the same with
# Transformer Engine's spec when TE imports. Prints a table and one PASS/FAIL line per check;
# exits 0 only if all pass (see scripts/gpu_check.py).
#
#   bash scripts/gpu_check.sh [--python PY] [--wheels DIR] [--venv DIR]
#                             [--device cuda|cpu] [--out DIR] [--peak-tflops T]
#
# Uses the machine's own torch (>= 2.4, Python 3.11 or 3.12) and never installs another one.
# Only missing dependencies of the project are installed: into PY (default python3) when it is
# a virtual or conda environment, else into a venv (default .venv-gpu) created with
# --system-site-packages so that PY's torch is reused. --wheels DIR installs offline from a
# directory of wheels. Without a visible GPU it says so in one line and exits 0;
# --device cpu runs the same checks on the CPU with gloo at tiny sizes.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py=python3
wheels=""
venv="$repo/.venv-gpu"
device=cuda
forward=()

die() { echo "gpu_check: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --python) py="${2:?--python needs a path}"; shift 2 ;;
        --wheels) wheels="${2:?--wheels needs a directory}"; shift 2 ;;
        --venv) venv="${2:?--venv needs a directory}"; shift 2 ;;
        --device) device="${2:?--device needs cuda or cpu}"; forward+=("$1" "$2"); shift 2 ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | cut -c3-; exit 0 ;;
        *) forward+=("$1"); shift ;;
    esac
done
case "$device" in cuda|cpu) ;; *) die "--device must be cuda or cpu, not '$device'" ;; esac
[ -z "$wheels" ] || [ -d "$wheels" ] || die "--wheels $wheels is not a directory"
command -v "$py" >/dev/null || die "python '$py' not found (pass --python)"

"$py" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))' \
    || die "$("$py" -V 2>&1) found; Python 3.11 or 3.12 is needed (megatron-core 0.16.1 wheels)"
torch_version="$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null)" \
    || die "torch is not importable by $py; install the machine's CUDA build of torch first"
"$py" - "$torch_version" <<'EOF' || die "torch $torch_version is older than 2.4"
import re, sys
sys.exit(tuple(map(int, re.findall(r"\d+", sys.argv[1])[:2])) < (2, 4))
EOF
if [ "$device" = cuda ]; then
    gpus="$("$py" -c 'import torch; print(torch.cuda.device_count())')"
    if [ "$gpus" = 0 ]; then
        echo "gpu_check: torch $torch_version sees no CUDA GPU; nothing to check" \
            "(--device cpu runs the checks on the CPU)"
        exit 0
    fi
fi

# The project's dependencies (pyproject.toml), torch pinned to the installed build.
requirements="$(mktemp)"; constraints="$(mktemp)"
"$py" - "$repo/pyproject.toml" >"$requirements" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
echo "torch==$torch_version" >"$constraints"
satisfied() {  # pip installs nothing without an index; it fails if anything is missing
    "$1" -m pip install -q --no-index -r "$requirements" -c "$constraints" >/dev/null 2>&1
}
if ! satisfied "$py"; then
    in_env="$("$py" -c 'import os, sys
print(int(sys.prefix != sys.base_prefix or os.path.isdir(sys.prefix + "/conda-meta")))')"
    if [ "$in_env" != 1 ]; then
        if [ ! -x "$venv/bin/python" ]; then
            echo "gpu_check: creating $venv (--system-site-packages, reusing torch" \
                "$torch_version)" >&2
            "$py" -m venv --system-site-packages "$venv" || die "cannot create venv $venv"
        fi
        py="$venv/bin/python"
    fi
    source_args=()
    [ -z "$wheels" ] || source_args=(--no-index --find-links "$wheels")
    echo "gpu_check: installing what is missing into $("$py" -c 'import sys; print(sys.prefix)')" >&2
    "$py" -m pip install -q "${source_args[@]}" -r "$requirements" -c "$constraints" >&2 \
        || die "installing the dependencies failed (offline? pass --wheels DIR)"
fi

rm -f "$requirements" "$constraints"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" "$repo/scripts/gpu_check.py" "${forward[@]}"
