#!/usr/bin/env bash
# GPU check of Cross-Scale MAE: CUDA tests, ViT-B/16 bf16 steps (SDPA / xFormers,
# eager / torch.compile, full / partial decoding), Kornia ScaleViews on CUDA vs CPU and
# a 2-step fit of the paper config; one Markdown table in about 8 minutes or less.
#
#   bash benchmarks/gpu_check.sh [--install-xformers] [--output outputs/gpu_check.md]
#
# Python: $PYTHON, else the repository's .venv, else python3. Without a CUDA device it
# prints "no CUDA device: ..." and exits 0. Options: python benchmarks/gpu_check.py -h
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" benchmarks/gpu_check.py "$@"
