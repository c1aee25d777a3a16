# syntax=docker/dockerfile:1
# Images of speech2image-triton, one Dockerfile, several targets:
#
#   server              the NGC Triton container plus exactly the Python packages the
#                       served Python-backend (BLS) models import; serves a repository
#                       mounted at /models (stage graphs on Triton's native onnxruntime /
#                       tensorrt backends: `s2i convert --target onnxruntime-gpu|tensorrt`)
#   converter           server + Optimum / ONNX / ONNX Runtime / tritonclient and the
#                       tokenizer assets: runs `s2i convert` (and `s2i build-tiny`) on CPU,
#                       for every target but tensorrt
#   converter-tensorrt  converter + TensorRT's Python API (the container's TensorRT
#                       version) and the CUDA build of torch: builds `--target tensorrt`
#                       engines; run it on a GPU of the serving nodes' kind
#   server-with-models  server with a repository converted at build time baked in
#
#   docker build --target server -t speech2image-triton-server:0.1.0 .
#   docker build --target converter -t speech2image-triton-converter:0.1.0 .
#   docker build --target converter-tensorrt -t speech2image-triton-converter:0.1.0-tensorrt .
#
# Base: NGC 26.03 (Ubuntu 24.04, Python 3.12, CUDA 13.2, TensorRT 10.16.0.72). It carries
# NVIDIA's fixes for the Python-backend chain CVE-2025-23319/23320/23334 (fixed in 25.07),
# CVE-2025-23316 (Python backend, fixed in 25.08) and the May 2026 bulletin 5828
# (CVE-2026-24207 authentication bypass and others, fixed in r26.03). Never go below it.
# tests/deploy/ derives the image's Python from this tag, builds an environment with
# that Python and exactly the packages of the `server` stage, and serves a repository in it.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:26.03-py3

FROM ${TRITON_IMAGE} AS server
# Ubuntu 24.04 marks its Python as externally managed (PEP 668); this image *is* the
# environment, so pip installs into it.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1
# torch only runs diffusers' scheduler arithmetic on CPU tensors in the BLS models (the
# graphs run on Triton's own backends), so the CPU build: the default PyPI build would
# add about 4 GB of CUDA 13 wheels beside the container's own CUDA.
# Then exactly what the served models import (tests/deploy checks the import closure of
# every model against this stage), pinned to the versions the tests run (checked by a test),
# plus the gRPC client the pods' probes run (`s2i health --deep`, a canned inference per model).
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch==2.13.0" \
    && python3 -m pip install --no-cache-dir \
        "numpy==1.26.4" \
        "scipy==1.17.1" \
        "soundfile==0.14.0" \
        "safetensors==0.8.0" \
        "transformers==4.57.6" \
        "diffusers==0.39.0" \
        "tritonclient[grpc]==2.73.0"
COPY --chown=1000:1000 . /opt/speech2image-triton
# The package itself, without its conversion/test dependencies (pinned above).
RUN python3 -m pip install --no-cache-dir --no-deps /opt/speech2image-triton
# The NGC image's unprivileged user `triton-server` (uid 1000); the Kubernetes manifests run as it too.
USER 1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/models"]

# `s2i convert` for the CPU-built targets (python-onnxruntime, onnxruntime, onnxruntime-gpu:
# export and validation run on CPU; only the configs differ) and `s2i build-tiny`. Of
# openai-whisper and open-clip-torch only the tokenizer assets are used (Whisper's
# multilingual vocabulary, CLIP's BPE merges), hence --no-deps, as in the Makefile.
FROM server AS converter
USER 0
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir \
        "optimum==2.1.0" \
        "optimum-onnx==0.1.0" \
        "onnx==1.23.2" \
        "onnxruntime==1.32.0" \
        "tritonclient[grpc]==2.73.0" \
    && python3 -m pip install --no-cache-dir --no-deps \
        "openai-whisper==20250625" \
        "open-clip-torch==3.3.0"
USER 1000
ENTRYPOINT ["s2i"]
CMD ["--help"]

# `s2i convert --target tensorrt`: engines are tied to the TensorRT version and the GPU
# that builds them, so the Python API is pinned to the TensorRT of the base image
# (10.16.0.72 in NGC 26.03) and this image runs on a GPU of the serving nodes' kind.
# `s2i`'s GPU probe uses torch.cuda, hence the CUDA build of the same torch here.
FROM converter AS converter-tensorrt
USER 0
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cu130 \
        "torch==2.13.0" \
    && python3 -m pip install --no-cache-dir "tensorrt-cu13==10.16.0.72"
USER 1000

# Converts checkpoints into /models at build time (network access to the hub for hub
# ids; local folders can be COPY'd in instead). Not for tensorrt: a build host's GPU is
# rarely the serving nodes' kind.
FROM converter AS repository-builder
USER 0
ARG WHISPER_CHECKPOINT=openai/whisper-small
ARG EMOTION_CHECKPOINT=""
ARG DIFFUSION_CHECKPOINT=""
ARG TARGET=onnxruntime-gpu
RUN mkdir -p /models && chown 1000:1000 /models
USER 1000
RUN HF_HUB_OFFLINE=0 HOME=/tmp s2i convert --whisper "${WHISPER_CHECKPOINT}" \
        ${EMOTION_CHECKPOINT:+--emotion "${EMOTION_CHECKPOINT}"} \
        ${DIFFUSION_CHECKPOINT:+--diffusion "${DIFFUSION_CHECKPOINT}"} \
        --target "${TARGET}" --output /models

FROM server AS server-with-models
COPY --from=repository-builder --chown=1000:1000 /models /models

# The web app (`s2i web`): the public front door, scaled apart from the GPU servers.
# It needs no torch or diffusers: only the client, the ASGI server and ffmpeg.
#   docker build --target web -t speech2image-web:0.1.0 .
#   docker run -p 8080:8080 -e S2I_WEB_TRITON_URL=triton:8001 speech2image-web:0.1.0
FROM python:3.11-slim-bookworm AS web
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    S2I_WEB_HOST=0.0.0.0 \
    S2I_WEB_PORT=8080 \
    S2I_WEB_CACHE_DIR=/tmp/s2i-web
# ffmpeg converts what browsers record; espeak-ng speaks the bundled Hindi sample.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg espeak-ng libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir \
        "numpy==1.26.4" \
        "soundfile==0.13.1" \
        "tritonclient[grpc]==2.73.0" \
        "starlette==1.10.0" \
        "uvicorn==0.54.0"
COPY --chown=65532:65532 . /opt/speech2image-triton
RUN python3 -m pip install --no-cache-dir --no-deps /opt/speech2image-triton
USER 65532
EXPOSE 8080
ENTRYPOINT ["python3", "-m", "s2i.web"]
