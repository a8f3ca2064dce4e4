# CUDA image with the locked environment and the maxtoki package installed.
#   docker build -t maxtoki .
#   docker run --gpus all --rm maxtoki maxtoki --help
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates git \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir uv==0.13.9

WORKDIR /opt/maxtoki
# dependencies first, so that code changes do not invalidate the heavy layer
COPY pyproject.toml uv.lock README.md ./
RUN /opt/uv/bin/uv sync --frozen --no-dev --no-install-project --python python3.11
COPY maxtoki ./maxtoki
COPY scripts ./scripts
COPY configs ./configs
RUN /opt/uv/bin/uv sync --frozen --no-dev --python python3.11

ENV PATH=/opt/maxtoki/.venv/bin:$PATH
CMD ["maxtoki", "--help"]
