# syntax=docker/dockerfile:1
# Production serving image: the NGC Triton container plus exactly the Python
# packages the Python-backend (BLS) models import. Stage graphs run on Triton's
# native onnxruntime / tensorrt backends (`s2i convert --target onnxruntime-gpu`
# or `--target tensorrt`), so ONNX Runtime for Python is not installed here.
#
#   docker build -t speech2image-triton-server:0.1.0 .
#   docker build --target server-with-models -t speech2image-triton-server:0.1.0-models .
#
# Triton 2.51.0 = NGC 24.10, the same server the `nvidia-pytriton` wheel embeds
# for tests. Versions below are pinned to pyproject.toml (checked by a test).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${TRITON_IMAGE} AS server
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir \
        "numpy==1.26.4" \
        "scipy==1.15.3" \
        "soundfile==0.13.1" \
        "safetensors==0.6.2" \
        "torch==2.13.0" \
        "transformers==4.57.6" \
        "diffusers==0.39.0"
COPY --chown=1000:1000 . /opt/speech2image-triton
# The package itself, without its conversion/test dependencies (pinned above).
RUN python3 -m pip install --no-cache-dir --no-deps /opt/speech2image-triton
# The NGC image's unprivileged user `triton-server` (uid 1000); the Kubernetes manifests run as it too.
USER 1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/models"]

# Converts checkpoints into /models at build time (needs the conversion packages and
# network access to the hub for hub ids; local folders can be COPY'd in instead).
FROM server AS repository-builder
USER 0
ARG WHISPER_CHECKPOINT=openai/whisper-small
ARG EMOTION_CHECKPOINT=""
ARG DIFFUSION_CHECKPOINT=""
ARG TARGET=onnxruntime-gpu
RUN python3 -m pip install --no-cache-dir \
        "optimum==2.1.0" \
        "optimum-onnx==0.1.0" \
        "onnx==1.23.2" \
        "onnxruntime==1.32.0" \
        "tritonclient[grpc]==2.73.0" \
    && mkdir -p /models && chown 1000:1000 /models
USER 1000
# TensorRT engines are tied to the GPU that builds them: build those on the
# serving nodes (the Kubernetes init container), not here.
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
