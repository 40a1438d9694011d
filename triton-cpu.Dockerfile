# syntax=docker/dockerfile:1.7
# Triton on CPU serving the scripted model (models/scripted: `ensemble` and `ensemble_stream`,
# the TensorRT-LLM ensemble interface) and the embedding model (models/embedding), for laptops without an NVIDIA GPU. The server is the
# tritonserver 2.51 that `agentq triton install` copies out of the hash-pinned nvidia-pytriton
# wheel (app/local/triton.py, shared/TRITON_ON_CPU.md), run with that module's command line on
# the container's ports: HTTP 8000, gRPC 8001, metrics 8002, as the GPU image.
#
#   docker build -f triton-cpu.Dockerfile -t agentq-triton-cpu:0.1.0 .

# The worker image's base: the python backend stub is built per Python minor (3.11 here).
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS python-base
LABEL org.opencontainers.image.title="agentq-triton-cpu" \
      org.opencontainers.image.description="Triton 2.51 on CPU serving agentq's scripted model and embedding model" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

FROM python-base AS builder
ARG UV_VERSION=0.13.9
RUN python -m pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY app ./app
COPY models ./models
# 1. agentq with the local-model extra (pip), only to run `agentq triton install`: it downloads
#    nvidia-pytriton==0.7.0 with --require-hashes and extracts bin/, lib/ and the python backend.
RUN --mount=type=cache,target=/root/.cache/uv \
    UV_PROJECT_ENVIRONMENT=/opt/install-venv uv sync --frozen --no-dev --no-editable --extra local-model \
    && AGENTQ_TRITON__HOME=/opt/triton /opt/install-venv/bin/agentq triton install
# 2. The stub's environment: the locked runtime dependencies (numpy<2: pitfall 3 of the recipe)
#    and the embedding extra (onnxruntime, the int8 all-MiniLM-L6-v2 and its tokenizer.json).
RUN --mount=type=cache,target=/root/.cache/uv \
    UV_PROJECT_ENVIRONMENT=/opt/venv uv sync --frozen --no-dev --no-editable --extra embedding

FROM python-base AS runtime
RUN groupadd --system --gid 10001 triton \
    && useradd --system --no-log-init --uid 10001 --gid triton --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin triton
COPY --from=builder /opt/triton /opt/triton
COPY --from=builder /opt/venv /opt/venv
COPY models/scripted /models
# Long-term memory's embedding model beside the scripted LLM (docs/memory.md).
COPY models/embedding /models
COPY --chmod=0755 scripts/http_probe.py /usr/local/bin/http-probe
# The stub links libpython3.11 (the image's, in /usr/local/lib, first) and libcudart from the
# wheel's libs; it takes sys.prefix from the first python3 on PATH: the venv with numpy.
ENV PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/usr/local/lib:/opt/triton/lib
USER 10001:10001
EXPOSE 8000 8001 8002
# tritonserver exits 0 on SIGTERM once clients are closed; --exit-timeout-secs bounds the wait.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["http-probe", "http://127.0.0.1:8000/v2/health/ready"]
# TritonServer.command() of app/local/triton.py, listening on all addresses on fixed ports.
ENTRYPOINT ["/opt/triton/bin/tritonserver", "--model-repository=/models", \
            "--backend-directory=/opt/triton/backends", \
            "--http-address=0.0.0.0", "--http-port=8000", \
            "--grpc-address=0.0.0.0", "--grpc-port=8001", \
            "--metrics-address=0.0.0.0", "--metrics-port=8002", \
            "--log-verbose=0", "--exit-timeout-secs=5", "--allow-gpu-metrics=false", \
            "--pinned-memory-pool-byte-size=0"]
