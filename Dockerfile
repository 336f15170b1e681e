# syntax=docker/dockerfile:1
# aiarch on CPU: `docker build -t aiarch .` then
#   docker run -p 8080:8080 aiarch --model fraud@production --registry postgresql://...
# Stage 1 builds the wheel (the native core included) and installs it with its runtime
# dependencies into a virtualenv; stage 2 copies only that virtualenv onto a slim base and runs
# as an unprivileged user. The serving entrypoint needs no torch: ONNX models run on ONNX
# Runtime. Build with --build-arg TORCH_VERSION=2.13.0 to serve .pt2/.pt models (CPU torch).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ cmake ninja-build \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml CMakeLists.txt README.md ./
COPY csrc csrc
COPY python python
RUN python -m pip wheel --no-cache-dir --no-deps -w /wheels .
# Extras baked into the image: ONNX Runtime models, the PostgreSQL registry, the Redis store.
ARG AIARCH_EXTRAS=onnx,postgres,redis,s3
ARG TORCH_VERSION=
RUN python -m venv /opt/aiarch \
 && /opt/aiarch/bin/pip install --no-cache-dir "$(ls /wheels/aiarch-*.whl)[${AIARCH_EXTRAS}]" \
 && if [ -n "${TORCH_VERSION}" ]; then \
      /opt/aiarch/bin/pip install --no-cache-dir \
        --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"; \
    fi

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 aiarch \
 && useradd --system --uid 10001 --gid aiarch --home-dir /var/lib/aiarch --create-home aiarch
COPY --from=build /opt/aiarch /opt/aiarch
ENV PATH=/opt/aiarch/bin:${PATH} \
    AIARCH_HOME=/var/lib/aiarch \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/aiarch
EXPOSE 8080
# Ready = started, not draining, every model loaded (400 otherwise, which urlopen raises on).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2)"]
ENTRYPOINT ["aiarch", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
