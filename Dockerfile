# Vigil: one image for every process (scoring service, feature flow, monitor, persister,
# MLflow server). Build: docker build -t vigil .   Run: see deploy/compose.yaml.

# --- build: a virtual environment with the pinned dependencies and Vigil itself
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
RUN python -m venv /opt/vigil \
    # PyTorch's CPU build (PyPI's default build of torch brings CUDA: several GB)
    && /opt/vigil/bin/pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
    && grep -v '^torch==' constraints.txt > /tmp/constraints.txt
COPY vigil vigil
COPY flows flows
COPY scoring scoring
RUN /opt/vigil/bin/pip install -c /tmp/constraints.txt .

# --- runtime: the environment, the Feast repo, a user without privileges
FROM python:3.11-slim AS runtime
RUN useradd --create-home --uid 10001 vigil \
    && mkdir -p /data /app \
    && chown vigil:vigil /data
COPY --from=build /opt/vigil /opt/vigil
COPY feature_repo /app/feature_repo
ENV PATH=/opt/vigil/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VIGIL_FEATURE_REPO=/app/feature_repo \
    VIGIL_DATA_DIR=/data \
    VIGIL_REPORTS_DIR=/data/reports \
    VIGIL_START_LOCAL_REDIS=false \
    # numba's compiled read path and feature kernel, cached where the user can write
    NUMBA_CACHE_DIR=/data/numba-cache
WORKDIR /app
USER vigil
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
ENTRYPOINT ["vigil"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
