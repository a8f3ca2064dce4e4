# syntax=docker/dockerfile:1
# CUDA image with a released CPython 3.11, the locked environment, flash-attention 2 and the maxtoki
# package (docs/scale-out.md, "Docker").
#   docker build -t maxtoki .
#   docker run --gpus all --rm maxtoki maxtoki --help
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_DOWNLOADS=never
COPY --from=uv /uv /uvx /usr/local/bin/

# Ubuntu 22.04's python3.11 package is a release candidate: the interpreter is uv's build of a release,
# the only download of an interpreter (every later step finds it installed)
ARG PYTHON_VERSION=3.11.18
RUN UV_PYTHON_DOWNLOADS=manual uv python install "$PYTHON_VERSION"

WORKDIR /opt/maxtoki
# dependencies first, so that code changes do not invalidate the heavy layers
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --python "$PYTHON_VERSION"

# flash-attention 2 publishes no wheels on PyPI (so it is not in the lock): its release wheel for this
# torch (2.7, built with the C++11 ABI), CUDA 12 and CPython 3.11, checked against its sha256
ARG FLASH_ATTN_WHEEL=https://github.com/Dao-AILab/flash-attention/releases/download/v2.8.3/flash_attn-2.8.3%2Bcu12torch2.7cxx11abiTRUE-cp311-cp311-linux_x86_64.whl
ARG FLASH_ATTN_SHA256=cd1a45ebfc1731a13e55ad68e0c9ad92390ddfffba306f9222be67c6d5a805af
RUN echo "flash-attn @ $FLASH_ATTN_WHEEL --hash=sha256:$FLASH_ATTN_SHA256" > /tmp/flash-attn.txt \
    && uv pip install --python .venv/bin/python --no-deps --require-hashes -r /tmp/flash-attn.txt \
    && rm /tmp/flash-attn.txt

COPY maxtoki ./maxtoki
COPY scripts ./scripts
COPY configs ./configs
# --inexact: keep flash-attention, which the lock does not list
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --inexact --python "$PYTHON_VERSION"

ENV PATH=/opt/maxtoki/.venv/bin:$PATH
CMD ["maxtoki", "--help"]
