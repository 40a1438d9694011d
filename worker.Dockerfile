# syntax=docker/dockerfile:1.7
# agentq worker image: `agentq worker` for the agent types in AGENTQ_WORKER__AGENTS (all when
# unset); the same image runs `agentq api`, `agentq flower`, `agentq exporter` and
# `agentq db upgrade`.
#
#   docker build -f worker.Dockerfile -t agentq-worker:0.1.0 .
#   docker run -e AGENTQ_WORKER__AGENTS=research -e AGENTQ_REDIS_URL=redis://redis:6379/0 ...
#
# Dependencies come from uv.lock only (`uv sync --frozen`); every package has a manylinux wheel,
# so neither stage needs a compiler. The final stage holds the virtual environment (agentq
# installed into it, not editable) and nothing of the build.

# python:3.11.14-slim-bookworm, pinned by the digest of its multi-architecture index.
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS python-base
LABEL org.opencontainers.image.title="agentq-worker" \
      org.opencontainers.image.description="agentq Celery worker, run API, Flower and backlog exporter" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

FROM python-base AS builder
# The uv of scripts/setup.sh, so the image resolves uv.lock exactly as the tests' environment.
ARG UV_VERSION=0.13.9
RUN python -m pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock changes, not on every code edit.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --extra postgres --extra otel --extra api
COPY app ./app
COPY models ./models
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --extra postgres --extra otel --extra api

FROM python-base AS runtime
# A fixed UID/GID, so volume permissions and Kubernetes runAsUser agree with the image.
# /served-tokenizer: where docker compose mounts the served model's tokenizer folder (workers
# read it; the cpu profile's one-shot writes the scripted model's there), owned by that user.
RUN groupadd --system --gid 10001 agentq \
    && useradd --system --no-log-init --uid 10001 --gid agentq --create-home \
       --home-dir /home/agentq --shell /usr/sbin/nologin agentq \
    && mkdir /served-tokenizer && chown 10001:10001 /served-tokenizer
COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 scripts/http_probe.py /usr/local/bin/http-probe
ENV PATH=/opt/venv/bin:$PATH \
    AGENTQ_HEALTH__HOST=0.0.0.0 \
    AGENTQ_HEALTH__PORT=9540
WORKDIR /home/agentq
USER 10001:10001
EXPOSE 9540
# Celery's warm shutdown on SIGTERM: steps in flight finish or go back to their queue within
# AGENTQ_WORKER__SOFT_SHUTDOWN_TIMEOUT_S (30 s); give the container a longer stop timeout.
STOPSIGNAL SIGTERM
# /livez fails only when the worker is wedged (heartbeat or a stuck step), not on a Redis outage.
# Through sh so that the port follows AGENTQ_HEALTH__PORT when a deployment changes it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "exec http-probe \"http://127.0.0.1:${AGENTQ_HEALTH__PORT}/livez\""]
ENTRYPOINT ["agentq", "worker"]
