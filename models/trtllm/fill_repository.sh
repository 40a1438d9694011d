#!/usr/bin/env bash
# Assemble the Triton model repository for the TensorRT-LLM engines in ENGINE_DIR.
#
# The models are the pinned release's own templates (the image's
# /app/all_models/inflight_batcher_llm: preprocessing, tensorrt_llm, postprocessing, ensemble),
# whose model.py files and configs match the backend they run on, filled with fill_template.py
# as tensorrtllm_backend documents. agentq calls `ensemble` unary (gRPC ModelInfer) and
# `ensemble_stream` streaming; Triton refuses unary calls to a decoupled model and an ensemble
# is decoupled when its tensorrt_llm step is, so the streaming pair is a copy whose
# `tensorrt_llm_stream` step has decoupled_mode true. Both load the same engines (the weights
# twice on the GPU); SERVE_MODELS=unary or stream loads one pair only.
# The result is checked (check_interface.py): no placeholder left where it breaks loading, and
# the ensembles' inputs and outputs identical to the interface agentq's client speaks.
#
# Guided decoding: agentq sends a reply that must call a tool with guided_decoding_guide_type
# json_schema. The C++ backend builds its XGrammar decoder only when the tensorrt_llm model has
# both guided_decoding_backend xgrammar and xgrammar_tokenizer_info_path (build_engines.sh writes
# that file); without them TensorRT-LLM rejects every request carrying a guide ("GuidedDecoder is
# not setup"). GUIDED_DECODING=false leaves both unset, for workers with
# AGENTQ_TRITON__GUIDED_DECODING=false.
#
#   fill_repository.sh OUTPUT_DIR
#
# Settings (environment):
#   ENGINE_DIR                      engines from build_engines.sh (/engines/engine)
#   TOKENIZER_DIR                   the Hugging Face checkpoint's tokenizer (/checkpoints/hf)
#   SERVE_MODELS                    both | unary | stream (both)
#   TRITON_MAX_BATCH_SIZE           at most the engines' MAX_BATCH_SIZE (64)
#   MAX_QUEUE_DELAY_MICROSECONDS    batching delay of the tensorrt_llm models (0)
#   MAX_QUEUE_SIZE                  requests queued per model before Triton rejects (0: no cap)
#   INSTANCE_COUNT                  pre/postprocessing (tokenizer) instances (4)
#   KV_CACHE_FREE_GPU_MEM_FRACTION  share of free GPU memory per tensorrt_llm model for its KV
#                                   cache, taken in load order (0.9 for one model, 0.45 for two)
#   ENABLE_KV_CACHE_REUSE           reuse a session's cached prompt prefix (true)
#   ENABLE_CHUNKED_CONTEXT          split long prompts across steps (true)
#   GUIDED_DECODING                 true | false: XGrammar guided decoding (true)
#   XGRAMMAR_TOKENIZER_INFO_PATH    ENGINE_DIR/tokenizer/xgrammar_tokenizer_info.json
#   EMBEDDING_MODELS                folder of the embedding models (minilm, minilm_tokenizer) copied
#                                   in beside the LLM's: all-MiniLM-L6-v2 on onnxruntime (CPU),
#                                   docs/memory.md (default: ../embedding beside this script, as
#                                   the image lays it out; empty: no embedding model)
#   ADD_SPECIAL_TOKENS              preprocessing adds the tokenizer's BOS to each prompt (false:
#                                   workers render prompts with the model's chat template, which
#                                   writes the BOS itself where the model wants one)
set -euo pipefail

out=${1:?usage: fill_repository.sh OUTPUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
templates=${TRITON_MODEL_TEMPLATES:-/app/all_models/inflight_batcher_llm}
fill=${FILL_TEMPLATE:-/app/tools/fill_template.py}
reference=${INTERFACE_REFERENCE:-$here/interface/ensemble.pbtxt}

ENGINE_DIR=${ENGINE_DIR:-/engines/engine}
TOKENIZER_DIR=${TOKENIZER_DIR:-/checkpoints/hf}
SERVE_MODELS=${SERVE_MODELS:-both}
TRITON_MAX_BATCH_SIZE=${TRITON_MAX_BATCH_SIZE:-64}
MAX_QUEUE_DELAY_MICROSECONDS=${MAX_QUEUE_DELAY_MICROSECONDS:-0}
MAX_QUEUE_SIZE=${MAX_QUEUE_SIZE:-0}
INSTANCE_COUNT=${INSTANCE_COUNT:-4}
ENABLE_KV_CACHE_REUSE=${ENABLE_KV_CACHE_REUSE:-true}
ENABLE_CHUNKED_CONTEXT=${ENABLE_CHUNKED_CONTEXT:-true}
GUIDED_DECODING=${GUIDED_DECODING:-true}
XGRAMMAR_TOKENIZER_INFO_PATH=${XGRAMMAR_TOKENIZER_INFO_PATH:-$ENGINE_DIR/tokenizer/xgrammar_tokenizer_info.json}
ADD_SPECIAL_TOKENS=${ADD_SPECIAL_TOKENS:-false}
EMBEDDING_MODELS=${EMBEDDING_MODELS-$here/../embedding}
case "$SERVE_MODELS" in
  both) KV_CACHE_FREE_GPU_MEM_FRACTION=${KV_CACHE_FREE_GPU_MEM_FRACTION:-0.45} ;;
  unary | stream) KV_CACHE_FREE_GPU_MEM_FRACTION=${KV_CACHE_FREE_GPU_MEM_FRACTION:-0.9} ;;
  *) echo "fill_repository: SERVE_MODELS must be both, unary or stream, not '$SERVE_MODELS'" >&2; exit 2 ;;
esac
case "$GUIDED_DECODING" in
  true | false) ;;
  *) echo "fill_repository: GUIDED_DECODING must be true or false, not '$GUIDED_DECODING'" >&2; exit 2 ;;
esac

for path in "$templates/ensemble" "$templates/tensorrt_llm" "$templates/preprocessing" "$templates/postprocessing" "$fill"; do
  [[ -e "$path" ]] || { echo "fill_repository: $path is missing (not the pinned Triton TensorRT-LLM image?)" >&2; exit 1; }
done

# A substitution list per model: the release's fill_template.py refuses a key its template
# lacks. Placeholders outside string_value (data types, batch sizes, counts) must all be filled;
# those left in string_value read as unset (check_interface.py checks both).
queue="triton_max_batch_size:${TRITON_MAX_BATCH_SIZE},max_queue_delay_microseconds:${MAX_QUEUE_DELAY_MICROSECONDS},max_queue_size:${MAX_QUEUE_SIZE}"
preprocessing_values="$queue,tokenizer_dir:${TOKENIZER_DIR},engine_dir:${ENGINE_DIR}"
preprocessing_values+=",add_special_tokens:${ADD_SPECIAL_TOKENS}"
preprocessing_values+=",preprocessing_instance_count:${INSTANCE_COUNT}"
postprocessing_values="triton_max_batch_size:${TRITON_MAX_BATCH_SIZE},tokenizer_dir:${TOKENIZER_DIR}"
postprocessing_values+=",skip_special_tokens:true,postprocessing_instance_count:${INSTANCE_COUNT}"
llm_values="triton_backend:tensorrtllm,$queue,engine_dir:${ENGINE_DIR},max_beam_width:1"
llm_values+=",batching_strategy:inflight_fused_batching,exclude_input_in_output:true"
llm_values+=",kv_cache_free_gpu_mem_fraction:${KV_CACHE_FREE_GPU_MEM_FRACTION}"
llm_values+=",enable_kv_cache_reuse:${ENABLE_KV_CACHE_REUSE},enable_chunked_context:${ENABLE_CHUNKED_CONTEXT}"
llm_values+=",logits_datatype:TYPE_FP32,encoder_input_features_data_type:TYPE_FP16"
if [[ "$GUIDED_DECODING" == true ]]; then
  llm_values+=",guided_decoding_backend:xgrammar,xgrammar_tokenizer_info_path:${XGRAMMAR_TOKENIZER_INFO_PATH}"
fi
ensemble_values="triton_max_batch_size:${TRITON_MAX_BATCH_SIZE},logits_datatype:TYPE_FP32"

rm -rf "$out"
mkdir -p "$out"
cp -r "$templates/preprocessing" "$templates/postprocessing" "$out/"
python3 "$fill" -i "$out/preprocessing/config.pbtxt" "$preprocessing_values"
python3 "$fill" -i "$out/postprocessing/config.pbtxt" "$postprocessing_values"

# add_pair LLM_MODEL ENSEMBLE DECOUPLED: a tensorrt_llm model and the ensemble that calls it.
add_pair() {
  local llm=$1 ensemble=$2 decoupled=$3
  cp -r "$templates/tensorrt_llm" "$out/$llm"
  cp -r "$templates/ensemble" "$out/$ensemble"
  sed -i "s/^name: \"tensorrt_llm\"/name: \"$llm\"/" "$out/$llm/config.pbtxt"
  sed -i -e "s/^name: \"ensemble\"/name: \"$ensemble\"/" \
         -e "s/model_name: \"tensorrt_llm\"/model_name: \"$llm\"/" "$out/$ensemble/config.pbtxt"
  grep -q "^name: \"$llm\"" "$out/$llm/config.pbtxt" && grep -q "model_name: \"$llm\"" "$out/$ensemble/config.pbtxt" \
    || { echo "fill_repository: could not rename the $llm/$ensemble templates" >&2; exit 1; }
  python3 "$fill" -i "$out/$llm/config.pbtxt" "$llm_values,decoupled_mode:$decoupled"
  python3 "$fill" -i "$out/$ensemble/config.pbtxt" "$ensemble_values"
}
if [[ "$SERVE_MODELS" != stream ]]; then add_pair tensorrt_llm ensemble false; fi
if [[ "$SERVE_MODELS" != unary ]]; then add_pair tensorrt_llm_stream ensemble_stream true; fi

if [[ -n "$EMBEDDING_MODELS" ]]; then
  for model in minilm minilm_tokenizer; do
    [[ -f "$EMBEDDING_MODELS/$model/config.pbtxt" ]] \
      || { echo "fill_repository: no embedding model $model in $EMBEDDING_MODELS" >&2; exit 1; }
    cp -r "$EMBEDDING_MODELS/$model" "$out/$model"
  done
fi

python3 "$here/check_interface.py" "$reference" "$out"
echo "fill_repository: model repository ready in $out ($SERVE_MODELS)"
