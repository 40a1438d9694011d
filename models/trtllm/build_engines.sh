#!/usr/bin/env bash
# Turn a Hugging Face checkpoint into TensorRT-LLM engines with the Triton image's own
# TensorRT-LLM (convert_checkpoint.py, then trtllm-build): engines only load in the TensorRT-LLM
# version that built them, so they are built in the image that serves them, on its GPUs.
#
# Idempotent: engines built with the same settings are kept (ENGINE_DIR/agentq-build.env records
# them); FORCE_REBUILD=1 builds again. The new engines are built beside the old ones and swapped
# in at the end, so an interrupted build never leaves half an engine directory.
#
# Settings (environment):
#   HF_MODEL_DIR     Hugging Face checkpoint: config.json, *.safetensors, tokenizer (/checkpoints/hf)
#   HF_MODEL_ID      optional Hub id downloaded into HF_MODEL_DIR when it holds no config.json
#                    (HF_TOKEN for gated models)
#   MODEL_FAMILY     folder of TensorRT-LLM's examples with convert_checkpoint.py (llama; also
#                    qwen, gemma, phi, ...; Mistral checkpoints use llama)
#   DTYPE            float16 | bfloat16 | float32 (bfloat16)
#   TP_SIZE PP_SIZE  tensor / pipeline parallel degree; TP_SIZE x PP_SIZE GPUs (1, 1)
#   MAX_BATCH_SIZE   most sequences in flight per engine (64); Triton's max_batch_size follows it
#   MAX_INPUT_LEN    longest prompt in tokens (4096)
#   MAX_OUTPUT_LEN   longest reply in tokens (1024); max_seq_len = MAX_INPUT_LEN + MAX_OUTPUT_LEN
#   MAX_NUM_TOKENS   tokens per engine step across the batch (8192)
#   ENGINE_DIR       where the engines go (/engines/engine)
#   CONVERT_EXTRA_ARGS / BUILD_EXTRA_ARGS  appended to each command (quantization, plugins)
set -euo pipefail

HF_MODEL_DIR=${HF_MODEL_DIR:-/checkpoints/hf}
HF_MODEL_ID=${HF_MODEL_ID:-}
MODEL_FAMILY=${MODEL_FAMILY:-llama}
DTYPE=${DTYPE:-bfloat16}
TP_SIZE=${TP_SIZE:-1}
PP_SIZE=${PP_SIZE:-1}
MAX_BATCH_SIZE=${MAX_BATCH_SIZE:-64}
MAX_INPUT_LEN=${MAX_INPUT_LEN:-4096}
MAX_OUTPUT_LEN=${MAX_OUTPUT_LEN:-1024}
MAX_NUM_TOKENS=${MAX_NUM_TOKENS:-8192}
ENGINE_DIR=${ENGINE_DIR:-/engines/engine}
CONVERT_EXTRA_ARGS=${CONVERT_EXTRA_ARGS:-}
BUILD_EXTRA_ARGS=${BUILD_EXTRA_ARGS:-}
FORCE_REBUILD=${FORCE_REBUILD:-0}
EXAMPLES_DIR=${TRTLLM_EXAMPLES_DIR:-/app/examples}

die() { echo "build_engines: $*" >&2; exit 1; }

settings=$(cat <<EOF
HF_MODEL_DIR=$HF_MODEL_DIR
HF_MODEL_ID=$HF_MODEL_ID
MODEL_FAMILY=$MODEL_FAMILY
DTYPE=$DTYPE
TP_SIZE=$TP_SIZE
PP_SIZE=$PP_SIZE
MAX_BATCH_SIZE=$MAX_BATCH_SIZE
MAX_INPUT_LEN=$MAX_INPUT_LEN
MAX_OUTPUT_LEN=$MAX_OUTPUT_LEN
MAX_NUM_TOKENS=$MAX_NUM_TOKENS
CONVERT_EXTRA_ARGS=$CONVERT_EXTRA_ARGS
BUILD_EXTRA_ARGS=$BUILD_EXTRA_ARGS
EOF
)
stamp="$ENGINE_DIR/agentq-build.env"
if [[ "$FORCE_REBUILD" != 1 && -f "$ENGINE_DIR/config.json" && -f "$stamp" ]] \
    && [[ "$(cat "$stamp")" == "$settings" ]]; then
  echo "build_engines: engines in $ENGINE_DIR match the settings; nothing to do"
  exit 0
fi

if [[ ! -f "$HF_MODEL_DIR/config.json" ]]; then
  [[ -n "$HF_MODEL_ID" ]] || die "no Hugging Face checkpoint in $HF_MODEL_DIR (config.json missing): mount one there or set HF_MODEL_ID"
  echo "build_engines: downloading $HF_MODEL_ID into $HF_MODEL_DIR"
  huggingface-cli download "$HF_MODEL_ID" --local-dir "$HF_MODEL_DIR"
fi

# The examples moved from examples/<family> to examples/models/core/<family> in 2025 releases.
convert=""
for candidate in "$EXAMPLES_DIR/models/core/$MODEL_FAMILY" "$EXAMPLES_DIR/models/contrib/$MODEL_FAMILY" "$EXAMPLES_DIR/$MODEL_FAMILY"; do
  if [[ -f "$candidate/convert_checkpoint.py" ]]; then convert="$candidate/convert_checkpoint.py"; break; fi
done
[[ -n "$convert" ]] || die "no convert_checkpoint.py for MODEL_FAMILY=$MODEL_FAMILY under $EXAMPLES_DIR"

work="$ENGINE_DIR.partial"
rm -rf "$work"
mkdir -p "$work/checkpoint"
echo "build_engines: converting $HF_MODEL_DIR with $convert (dtype $DTYPE, tp $TP_SIZE, pp $PP_SIZE)"
# shellcheck disable=SC2086  # the extra args are meant to split into words
python3 "$convert" --model_dir "$HF_MODEL_DIR" --output_dir "$work/checkpoint" \
  --dtype "$DTYPE" --tp_size "$TP_SIZE" --pp_size "$PP_SIZE" $CONVERT_EXTRA_ARGS

echo "build_engines: building engines (batch $MAX_BATCH_SIZE, input $MAX_INPUT_LEN, output $MAX_OUTPUT_LEN)"
# Paged KV cache with paged context FMHA: in-flight batching and KV cache reuse across a
# session's growing prompt (what agentq's session_affinity routing is for).
# shellcheck disable=SC2086
trtllm-build --checkpoint_dir "$work/checkpoint" --output_dir "$work/engine" \
  --gemm_plugin auto \
  --max_batch_size "$MAX_BATCH_SIZE" \
  --max_input_len "$MAX_INPUT_LEN" \
  --max_seq_len "$((MAX_INPUT_LEN + MAX_OUTPUT_LEN))" \
  --max_num_tokens "$MAX_NUM_TOKENS" \
  --kv_cache_type paged \
  --use_paged_context_fmha enable \
  --workers "$((TP_SIZE * PP_SIZE))" \
  $BUILD_EXTRA_ARGS

[[ -f "$work/engine/config.json" ]] || die "trtllm-build wrote no config.json in $work/engine"
printf '%s\n' "$settings" > "$work/engine/agentq-build.env"
rm -rf "$ENGINE_DIR"
mv "$work/engine" "$ENGINE_DIR"
rm -rf "$work"
echo "build_engines: engines ready in $ENGINE_DIR"
