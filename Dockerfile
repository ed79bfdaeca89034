# syntax=docker/dockerfile:1
#
# celltype: one image for `celltype serve` (the default), `celltype train`, `celltype score` and the
# other subcommands. CPU torch by default; see docs/deployment.md for a CUDA build.
#
#   docker build -t celltype:latest .
#   docker run --rm -p 127.0.0.1:8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow:5000 \
#       -e CELLTYPE_MODEL_URI=models:/celltype-demo@champion celltype:latest
#   docker run --rm celltype:latest score --help
#
# Layers are ordered from the least to the most often changed: torch, then the other dependencies
# (read from pyproject.toml), then the project's source. Everything is installed into a virtual
# environment in a builder stage and only that environment is copied into the runtime stage, so no
# compiler, pip cache or build file ends up in the image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# The runtime dependencies exactly as pyproject.toml declares them, as a requirements file: its
# content (and so the cache of the layers installing it) changes only when the dependencies do.
FROM ${PYTHON_IMAGE} AS requirements
COPY pyproject.toml /pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/pyproject.toml', 'rb'))['project']['dependencies']))" \
    > /requirements.txt


FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
 && pip install --upgrade pip setuptools wheel
# 1. torch from the PyTorch index (CPU wheels unless TORCH_INDEX_URL says otherwise), so that the
#    dependencies below find it installed and never pull the CUDA build from PyPI.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
# 2. the other runtime dependencies.
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt
# 3. the project itself; its dependencies are all in place, so nothing else is resolved.
COPY pyproject.toml /src/pyproject.toml
COPY cli /src/cli
COPY model /src/model
COPY training /src/training
COPY service /src/service
RUN pip install --no-deps --no-build-isolation /src \
 && python -c "import cli.main, model.pyfunc, service.app, service.scoring, training.trainer, training.tracking" \
 && celltype --help > /dev/null


# The MLflow tracking server of docker-compose.yml (`--target mlflow-server`): MLflow with the
# PostgreSQL driver and boto3 for S3 artifacts; no torch, no celltype.
FROM ${PYTHON_IMAGE} AS mlflow-server
ARG MLFLOW_VERSION=3.17.2
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg2-binary>=2.9,<3" "boto3>=1.34,<2" \
 && groupadd --system --gid 10002 mlflow \
 && useradd --system --uid 10002 --gid mlflow --home-dir /home/mlflow --create-home --shell /usr/sbin/nologin mlflow
USER 10002:10002
WORKDIR /home/mlflow
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=12 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["mlflow", "server"]


FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="celltype" \
      org.opencontainers.image.description="Cell-type classification with Batch Renormalization: train, register in MLflow, serve, score." \
      org.opencontainers.image.licenses="MIT"
# A fixed non-root user; /outputs and /scores are where the compose stack mounts training outputs
# and scoring results, the cache holds bundles fetched from the registry.
RUN groupadd --system --gid 10001 celltype \
 && useradd --system --uid 10001 --gid celltype --home-dir /home/celltype --create-home \
        --shell /usr/sbin/nologin celltype \
 && mkdir -p /home/celltype/.cache/celltype/bundles /outputs /scores \
 && chown -R celltype:celltype /home/celltype /outputs /scores
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    CELLTYPE_HOST=0.0.0.0 \
    CELLTYPE_PORT=8000 \
    CELLTYPE_CACHE_DIR=/home/celltype/.cache/celltype/bundles
USER 10001:10001
WORKDIR /home/celltype
EXPOSE 8000
# Ready means a model is loaded and requests are served (503 before): urlopen raises on any non-2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('CELLTYPE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["celltype"]
CMD ["serve"]
