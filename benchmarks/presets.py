"""Model-size presets of ``s2i bench`` (kept apart from the workloads so the CLI parser stays light)."""

# Per-stage checkpoint sizes. `tiny` keeps tests fast; `realistic` has real architectures
# (Whisper-base dimensions) with random weights so CPU figures reflect compute; GPU presets
# are listed for the GPU machines.
PRESETS: dict[str, dict[str, str]] = {
    "tiny": {"whisper": "tiny", "emotion": "tiny", "diffusion": "tiny"},
    # Whisper-base dimensions, a BiLSTM emotion model, a reduced SD UNet at 256x256.
    "realistic": {"whisper": "base", "emotion": "base", "diffusion": "base"},
    # Whisper-small and SD-1.5 dimensions at 512x512: for GPU machines (convert with a GPU target).
    "gpu-sd15": {"whisper": "small", "emotion": "base", "diffusion": "sd15"},
}
