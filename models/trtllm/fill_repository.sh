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
case "$SERVE_MODELS" in
  both) KV_CACHE_FREE_GPU_MEM_FRACTION=${KV_CACHE_FREE_GPU_MEM_FRACTION:-0.45} ;;
  unary | stream) KV_CACHE_FREE_GPU_MEM_FRACTION=${KV_CACHE_FREE_GPU_MEM_FRACTION:-0.9} ;;
  *) echo "fill_repository: SERVE_MODELS must be both, unary or stream, not '$SERVE_MODELS'" >&2; exit 2 ;;
esac

for path in "$templates/ensemble" "$templates/tensorrt_llm" "$templates/preprocessing" "$templates/postprocessing" "$fill"; do
  [[ -e "$path" ]] || { echo "fill_repository: $path is missing (not the pinned Triton TensorRT-LLM image?)" >&2; exit 1; }
done

# One substitution list for every model (fill_template.py ignores keys a template lacks). The
# data types fill placeholders outside string_value, which must never stay unfilled.
values="triton_backend:tensorrtllm,triton_max_batch_size:${TRITON_MAX_BATCH_SIZE}"
values+=",max_queue_delay_microseconds:${MAX_QUEUE_DELAY_MICROSECONDS},max_queue_size:${MAX_QUEUE_SIZE}"
values+=",engine_dir:${ENGINE_DIR},tokenizer_dir:${TOKENIZER_DIR},max_beam_width:1"
values+=",batching_strategy:inflight_fused_batching,exclude_input_in_output:true"
values+=",kv_cache_free_gpu_mem_fraction:${KV_CACHE_FREE_GPU_MEM_FRACTION}"
values+=",enable_kv_cache_reuse:${ENABLE_KV_CACHE_REUSE},enable_chunked_context:${ENABLE_CHUNKED_CONTEXT}"
values+=",preprocessing_instance_count:${INSTANCE_COUNT},postprocessing_instance_count:${INSTANCE_COUNT}"
values+=",add_special_tokens:true,skip_special_tokens:true"
values+=",logits_datatype:TYPE_FP32,encoder_input_features_data_type:TYPE_FP16"
values+=",prompt_embedding_table_data_type:TYPE_FP16"

rm -rf "$out"
mkdir -p "$out"
cp -r "$templates/preprocessing" "$templates/postprocessing" "$out/"
python3 "$fill" -i "$out/preprocessing/config.pbtxt" "$values"
python3 "$fill" -i "$out/postprocessing/config.pbtxt" "$values"

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
  python3 "$fill" -i "$out/$llm/config.pbtxt" "$values,decoupled_mode:$decoupled"
  python3 "$fill" -i "$out/$ensemble/config.pbtxt" "$values"
}
if [[ "$SERVE_MODELS" != stream ]]; then add_pair tensorrt_llm ensemble false; fi
if [[ "$SERVE_MODELS" != unary ]]; then add_pair tensorrt_llm_stream ensemble_stream true; fi

python3 "$here/check_interface.py" "$reference" "$out"
echo "fill_repository: model repository ready in $out ($SERVE_MODELS)"
