#!/usr/bin/env bash
# All GPU checks in one run (~10 minutes on one H100/H200); results in $OUT/gpu_check.md (default bench/results).
# Installs flash-attn and the optional peers first where the registry allows (no failure if one does not build).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
TORCH="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
for extra in "flash-attn --no-build-isolation" "liger-kernel" "trl>=1.0,<2"; do
    timeout 240 "$PY" -m pip install -q "torch==$TORCH" $extra || echo "gpu_check: could not install $extra"
done
PYTHONPATH=src:. OMP_NUM_THREADS=4 "$PY" -m bench.gpu_check "$@"
