#!/usr/bin/env bash
# Serve the engines in ENGINE_DIR: fill the model repository, then run tritonserver on HTTP 8000
# (/v2/health/ready), gRPC 8001 and metrics 8002.
#
# Orchestrator mode, as tensorrtllm_backend's launch_triton_server.py --multi-model runs it:
# one tritonserver under `mpirun -n 1`, and the backend spawns an executor process per GPU rank
# of each tensorrt_llm model. It lets the unary and the streaming model share the server and
# works for TP_SIZE > 1 without a reverse proxy. Models load one at a time, so the first one's
# KV cache share of free memory is taken before the second one looks.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
ENGINE_DIR=${ENGINE_DIR:-/engines/engine}
MODEL_REPOSITORY=${MODEL_REPOSITORY:-/tmp/model_repository}
export ENGINE_DIR

if [[ ! -f "$ENGINE_DIR/config.json" ]]; then
  echo "serve: no TensorRT-LLM engines in $ENGINE_DIR: run build_engines.sh first" \
       "(docker compose: the triton-engines service)" >&2
  exit 1
fi
# The tensorrt_llm model fails to load when its XGrammar tokenizer info is missing; say why here.
if [[ "${GUIDED_DECODING:-true}" == true ]]; then
  info=${XGRAMMAR_TOKENIZER_INFO_PATH:-$ENGINE_DIR/tokenizer/xgrammar_tokenizer_info.json}
  if [[ ! -f "$info" ]]; then
    echo "serve: guided decoding needs $info: run build_engines.sh again (it writes it beside" \
         "the engines), or set GUIDED_DECODING=false here and AGENTQ_TRITON__GUIDED_DECODING=false" \
         "on the workers" >&2
    exit 1
  fi
fi
"$here/fill_repository.sh" "$MODEL_REPOSITORY"

# launch_triton_server.py's multi-model settings: no pinned or CUDA memory pools in the
# orchestrator (the spawned executors own the GPUs) and no peer access between them.
gpus=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true)
pools=()
for ((i = 0; i < gpus; i++)); do pools+=("--cuda-memory-pool-byte-size=$i:0"); done

export TRTLLM_ORCHESTRATOR=1 TRTLLM_ORCHESTRATOR_SPAWN_PROCESSES=1
exec mpirun --allow-run-as-root -n 1 tritonserver \
  --model-repository="$MODEL_REPOSITORY" \
  --http-port=8000 --grpc-port=8001 --metrics-port=8002 \
  --model-load-thread-count=1 \
  --exit-timeout-secs="${TRITON_EXIT_TIMEOUT_S:-30}" \
  --log-verbose="${TRITON_LOG_VERBOSE:-0}" \
  --pinned-memory-pool-byte-size=0 --enable-peer-access=false "${pools[@]}" \
  --disable-auto-complete-config \
  --backend-config=python,shm-region-prefix-name=prefix0_
