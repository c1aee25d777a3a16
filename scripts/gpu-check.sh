#!/usr/bin/env bash
# The prepared GPU check (issue #20): PyTorch reference per-stage and end-to-end times at
# Whisper-small and Stable Diffusion 1.5 dimensions, written to a results table.
#
# Made for an air-gapped GPU host: Python 3.12 with PyTorch (CUDA) and transformers, but no
# diffusers and no package index. What the host lacks travels as wheels (see `prepare`),
# installed offline into a private folder; nothing else is touched.
#
#   scripts/gpu-check.sh prepare            # here (has an index): fetch the wheels for Python 3.12
#   scripts/gpu-check.sh [--output DIR]     # on the GPU host: install the carried wheels, measure
#   scripts/gpu-check.sh --dry-run          # tiny dimensions on the CPU (what CI runs)
#
# WHEELS (default build/gpu-check/wheels) holds the carried wheels; PYTHON picks the interpreter.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${WHEELS:-$ROOT/build/gpu-check/wheels}"
PYTHON="${PYTHON:-python3}"
# diffusers (pure Python), Pillow (imported by diffusers at import time), requests and httpx with
# their dependencies (diffusers imports both; transformers 5's hub client may bring neither): ~16 MB.
CARRIED=("diffusers==0.39.0" "pillow==11.3.0" "requests==2.32.5" "urllib3==2.5.0" "idna==3.10"
    "charset-normalizer==3.4.3" "certifi==2025.8.3" "httpx==0.28.1" "httpcore==1.0.9" "h11==0.16.0"
    "anyio==4.11.0" "sniffio==1.3.1")

if [[ "${1:-}" == "prepare" ]]; then
    mkdir -p "$WHEELS"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --dest "$WHEELS" "${CARRIED[@]}"
    du -sh "$WHEELS"
    exit 0
fi

SITE=""
if ! "$PYTHON" -c "import diffusers" 2>/dev/null; then
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "error: diffusers is not installed and no wheels in $WHEELS; run \`$0 prepare\` where an index is reachable" >&2
        exit 2
    fi
    SITE="$(mktemp -d)"
    trap 'rm -rf "$SITE"' EXIT
    # --no-deps: everything else diffusers needs (torch, huggingface_hub, safetensors, numpy) comes with transformers.
    "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
fi

export PYTHONPATH="${SITE:+$SITE:}${PYTHONPATH:-}"
exec "$PYTHON" "$ROOT/benchmarks/gpu_check.py" "$@"
