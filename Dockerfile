# syntax=docker/dockerfile:1
# The pipeline image: the project's CLI, components and flows on the stack pinned in
# requirements.lock, run as an unprivileged user. One image serves the Prefect worker,
# flow-run pods, the Ray head and workers and the Evidently UI (k8s/base).
#
#   docker build -t ghcr.io/example/mlops-pipeline:TAG .
#   docker build --build-arg TORCH_VARIANT=cu128 -t ghcr.io/example/mlops-pipeline-cuda:TAG .
#   docker build --target mlflow-server -t ghcr.io/example/mlops-pipeline-mlflow:TAG .
#
# The base is pinned to an exact patch release; pin its digest as well when you publish:
# python:3.11.14-slim-bookworm@sha256:<digest of `docker buildx imagetools inspect`>.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# torch comes from PyTorch's own index: "cpu" (the default) gives the CPU wheel; a CUDA
# variant such as "cu128" (the GPU image for the Ray GPU workers) replaces it with the
# CUDA build of the same version, which brings its nvidia-* runtime wheels with it.
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install --yes --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
# Every package exactly as locked, with --no-deps: pip's resolver never runs (it cannot
# resolve prefect 3.9.1 on every index; README "Troubleshooting").
RUN grep -v '^torch==' /tmp/requirements.lock > /tmp/requirements.without-torch.lock \
    && pip install --no-deps --requirement /tmp/requirements.without-torch.lock
# The torch pin is read from the lock ($torch_pin), which hadolint cannot see.
# hadolint ignore=DL3013
RUN torch_pin="$(grep '^torch==' /tmp/requirements.lock)" \
    && if [ "$TORCH_VARIANT" = cpu ]; then \
        pip install --no-deps --index-url https://download.pytorch.org/whl/cpu "$torch_pin"; \
    else \
        pip install --index-url "https://download.pytorch.org/whl/$TORCH_VARIANT" \
            --extra-index-url https://pypi.org/simple "$torch_pin"; \
    fi

# No compiler, no apt lists, no pip cache: only the virtual environment is carried over.
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/app
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app \
    && install --directory --owner app --group app /app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Code stays root-owned (read-only to the app user); stages write their outputs beside it.
COPY components/ components/
COPY flows/ flows/
COPY params.yaml dvc.yaml prefect.yaml ./
USER 10001:10001
CMD ["python", "-m", "components", "--help"]

# `mlflow server` with a PostgreSQL backend store: the pipeline image plus the driver,
# which the pipeline itself never imports (so it is not in requirements.lock).
FROM runtime AS mlflow-server
USER 0
RUN pip install --no-cache-dir --no-deps psycopg2-binary==2.9.13
USER 10001:10001
CMD ["mlflow", "server", "--help"]

# The default target.
FROM runtime AS pipeline
