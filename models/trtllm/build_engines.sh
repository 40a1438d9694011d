#!/usr/bin/env bash
# Turn a Hugging Face checkpoint into TensorRT-LLM engines with the Triton image's own
# TensorRT-LLM (convert_checkpoint.py, then trtllm-build): engines only load in the TensorRT-LLM
# version that built them, so they are built in the image that serves them, on its GPUs.
#
# Beside the engines, in ENGINE_DIR/tokenizer, the served model's tokenizer for agentq's workers
# (export_tokenizer.py: tokenizer.json, tokenizer_config.json with the chat template) and, for
# guided decoding, XGrammar's view of its vocabulary (xgrammar_tokenizer_info.json, written by
# TensorRT-LLM's examples/generate_xgrammar_tokenizer_info.py), which fill_repository.sh hands to
# the tensorrt_llm model: the C++ backend only honours a guide with it. TOKENIZER_EXPORT_DIR, when
# set, receives a copy of that folder on every run (docker compose: the workers' volume).
#
# Idempotent: engines built with the same settings are kept (ENGINE_DIR/agentq-build.env records
# them), and so is the tokenizer folder (ENGINE_DIR/tokenizer/agentq-tokenizer.env);
# FORCE_REBUILD=1 builds both again. Each is built beside the old one and swapped in at the end,
# so an interrupted build never leaves half an engine or tokenizer directory.
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
#   GUIDED_DECODING  true | false: write xgrammar_tokenizer_info.json (true); false only with
#                    fill_repository.sh's GUIDED_DECODING=false and workers'
#                    AGENTQ_TRITON__GUIDED_DECODING=false
#   TOKENIZER_EXPORT_DIR  optional folder that gets a copy of ENGINE_DIR/tokenizer
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

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
GUIDED_DECODING=${GUIDED_DECODING:-true}
TOKENIZER_EXPORT_DIR=${TOKENIZER_EXPORT_DIR:-}
EXAMPLES_DIR=${TRTLLM_EXAMPLES_DIR:-/app/examples}
TOKENIZER_DIR_OUT="$ENGINE_DIR/tokenizer"

die() { echo "build_engines: $*" >&2; exit 1; }
case "$GUIDED_DECODING" in
  true | false) ;;
  *) echo "build_engines: GUIDED_DECODING must be true or false, not '$GUIDED_DECODING'" >&2; exit 2 ;;
esac

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

ensure_checkpoint() {
  [[ -f "$HF_MODEL_DIR/config.json" ]] && return 0
  [[ -n "$HF_MODEL_ID" ]] || die "no Hugging Face checkpoint in $HF_MODEL_DIR (config.json missing): mount one there or set HF_MODEL_ID"
  echo "build_engines: downloading $HF_MODEL_ID into $HF_MODEL_DIR"
  huggingface-cli download "$HF_MODEL_ID" --local-dir "$HF_MODEL_DIR"
}

build_engines() {
  local stamp="$ENGINE_DIR/agentq-build.env"
  if [[ "$FORCE_REBUILD" != 1 && -f "$ENGINE_DIR/config.json" && -f "$stamp" ]] \
      && [[ "$(cat "$stamp")" == "$settings" ]]; then
    echo "build_engines: engines in $ENGINE_DIR match the settings; nothing to do"
    return 0
  fi
  ensure_checkpoint

  # The examples moved from examples/<family> to examples/models/core/<family> in 2025 releases.
  local convert="" candidate
  for candidate in "$EXAMPLES_DIR/models/core/$MODEL_FAMILY" "$EXAMPLES_DIR/models/contrib/$MODEL_FAMILY" "$EXAMPLES_DIR/$MODEL_FAMILY"; do
    if [[ -f "$candidate/convert_checkpoint.py" ]]; then convert="$candidate/convert_checkpoint.py"; break; fi
  done
  [[ -n "$convert" ]] || die "no convert_checkpoint.py for MODEL_FAMILY=$MODEL_FAMILY under $EXAMPLES_DIR"

  local work="$ENGINE_DIR.partial"
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
  # The old tokenizer folder goes with the old engines: the next step writes the new model's.
  rm -rf "$ENGINE_DIR"
  mv "$work/engine" "$ENGINE_DIR"
  rm -rf "$work"
  echo "build_engines: engines ready in $ENGINE_DIR"
}

# The tokenizer folder: the checkpoint's tokenizer and chat template for the workers, and
# XGrammar's tokenizer info for guided decoding (TensorRT-LLM's own script, run on its
# transformers, so the vocabulary is read as the engines' runtime reads it).
export_tokenizer() {
  local stamp="$TOKENIZER_DIR_OUT/agentq-tokenizer.env"
  local wanted
  wanted=$(printf 'HF_MODEL_DIR=%s\nHF_MODEL_ID=%s\nGUIDED_DECODING=%s' "$HF_MODEL_DIR" "$HF_MODEL_ID" "$GUIDED_DECODING")
  if [[ "$FORCE_REBUILD" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    echo "build_engines: tokenizer in $TOKENIZER_DIR_OUT matches the settings; nothing to do"
    return 0
  fi
  ensure_checkpoint
  local work="$TOKENIZER_DIR_OUT.partial"
  rm -rf "$work"
  python3 "$here/export_tokenizer.py" "$HF_MODEL_DIR" "$work" || die "cannot export the tokenizer of $HF_MODEL_DIR"
  if [[ "$GUIDED_DECODING" == true ]]; then
    local script="$EXAMPLES_DIR/generate_xgrammar_tokenizer_info.py"
    [[ -f "$script" ]] || die "no $script (TensorRT-LLM's examples) to write XGrammar's tokenizer info; GUIDED_DECODING=false serves without guided decoding"
    echo "build_engines: writing XGrammar's tokenizer info with $script"
    python3 "$script" --model_dir "$HF_MODEL_DIR" --output_dir "$work"
    [[ -f "$work/xgrammar_tokenizer_info.json" ]] || die "$script wrote no xgrammar_tokenizer_info.json in $work"
  fi
  printf '%s\n' "$wanted" > "$work/agentq-tokenizer.env"
  rm -rf "$TOKENIZER_DIR_OUT"
  mv "$work" "$TOKENIZER_DIR_OUT"
  echo "build_engines: tokenizer ready in $TOKENIZER_DIR_OUT"
}

# A copy for the workers (docker compose mounts TOKENIZER_EXPORT_DIR into them), made on every
# run: it replaces whatever another model or the CPU profile left there.
publish_tokenizer() {
  [[ -n "$TOKENIZER_EXPORT_DIR" ]] || return 0
  mkdir -p "$TOKENIZER_EXPORT_DIR"
  find "$TOKENIZER_EXPORT_DIR" -mindepth 1 -delete
  cp -R "$TOKENIZER_DIR_OUT/." "$TOKENIZER_EXPORT_DIR/"
  echo "build_engines: tokenizer copied to $TOKENIZER_EXPORT_DIR"
}

build_engines
export_tokenizer
publish_tokenizer
