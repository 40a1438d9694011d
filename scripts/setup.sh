#!/usr/bin/env bash
# Set up a fresh machine (idempotent): uv, the locked virtual environment in .venv, and the
# CPU tritonserver extracted from the nvidia-pytriton wheel (for the demo and the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
if ! python3 -m uv --version 2>/dev/null | grep -q "$UV_VERSION"; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
python3 -m uv sync --quiet --frozen --all-extras
.venv/bin/agentq triton install
